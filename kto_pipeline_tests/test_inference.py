"""Inference: KTOInference over HF weights and GGUF, and `kto chat` driven through a pseudo-terminal."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kto_pipeline.cli.chat import ChatSession, _printable
from kto_pipeline.inference import InferenceError, KTOInference
from kto_pipeline_tests.conftest import KTO, Terminal

Q = [{"role": "user", "content": "What is machine learning?"}]


@pytest.fixture(scope="module")
def hf_bot(tiny_model_dir) -> KTOInference:
    return KTOInference(tiny_model_dir)


@pytest.fixture(scope="module")
def legacy_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with transformers' legacy=True SentencePiece behaviour (a space after special tokens),
    which is what llama.cpp does; the GGUF export rejects files whose tokenization differs (see GGUF.md)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("legacy") / "tiny"
    shutil.copytree(tiny_model_dir, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**cfg, "legacy": True}))
    return out


@pytest.fixture(scope="module")
def gguf_path(legacy_model_dir, tmp_path_factory) -> Path:
    try:
        from kto_pipeline.export.gguf import convert_to_gguf
    except ImportError as exc:
        pytest.skip(f"GGUF export (kto_pipeline.export.gguf.convert_to_gguf) is not available yet: {exc}")
    return convert_to_gguf(legacy_model_dir, tmp_path_factory.mktemp("gguf"), "f16", "tiny")


def test_hf_generate_and_chat_use_the_chat_template(hf_bot, tiny_model_dir):
    from transformers import AutoTokenizer

    assert hf_bot.backend_name == "transformers"
    answer = hf_bot.generate("What is machine learning?", temperature=0, max_new_tokens=12)
    assert answer and answer == hf_bot.chat(Q, temperature=0, max_new_tokens=12)  # greedy: deterministic
    # generate() is exactly "the chat template around one user turn", decoded without the prompt.
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tok.apply_chat_template(Q, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    out = hf_bot.backend.model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert answer == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    # Sampling honours the seed and the temperature.
    a = hf_bot.chat(Q, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=3)
    assert a == hf_bot.chat(Q, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=3)
    assert a != answer or a != hf_bot.chat(Q, temperature=1.0, max_new_tokens=12, seed=4)


def test_hf_stream_matches_chat(hf_bot):
    full = hf_bot.chat(Q, temperature=0, max_new_tokens=60)
    pieces = list(hf_bot.stream_chat(Q, temperature=0, max_new_tokens=60))
    # The tiny model's greedy answer may be one "word" (one piece); the close() timing below shows the
    # stream is incremental.
    assert pieces and "".join(pieces) == full
    stream = hf_bot.stream_chat(Q, temperature=0, max_new_tokens=2000)
    next(stream)
    t0 = time.perf_counter()
    stream.close()  # stops the generation thread instead of letting it run 2000 tokens
    assert time.perf_counter() - t0 < 5


def test_bad_inputs_give_clear_errors(hf_bot, tiny_model_dir, tmp_path):
    with pytest.raises(InferenceError, match=r"messages\[1\] must be a dict"):
        hf_bot.chat([{"role": "user", "content": "hi"}, {"role": "assistant"}])
    with pytest.raises(InferenceError, match="neither a model folder"):
        KTOInference(tmp_path / "nowhere")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InferenceError, match="LoRA adapter; merge it first"):
        KTOInference(tmp_path / "adapter")


def test_chat_session_keeps_history_and_resets(hf_bot):
    session = ChatSession(hf_bot, system="Be brief.", temperature=0, max_new_tokens=8)
    first = "".join(session.send("hello"))
    "".join(session.send("and then?"))
    assert session.turns == 2 and [m["role"] for m in session.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert session.messages[2]["content"] == first
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]
    assert "".join(session.send("hello")) == first
    assert _printable("ok\x1b[2J\x07\n") == "ok\\x1b[2J\\x07\n"  # no terminal escapes from model output


def _answer(chunk: bytes) -> str:
    """The text between 'assistant> ' and the next prompt (the terminal turns \\n into \\r\\n)."""
    text = chunk.decode(errors="replace").replace("\r\n", "\n")
    assert "assistant> " in text, text
    return text.split("assistant> ", 1)[1].rstrip("\n")


def run_chat(path: Path, *extra: str) -> None:
    term = Terminal([*KTO, "chat", str(path), "--temperature", "0", "--max-new-tokens", "10", *extra])
    try:
        banner = term.read_until(b"you> ")
        assert b"/reset starts over, /exit quits" in banner
        term.send("hello")
        first = _answer(term.read_until(b"you> "))
        term.send("tell me more")
        _answer(term.read_until(b"you> "))
        term.send("/reset")
        assert b"(conversation cleared)" in term.read_until(b"you> ")
        term.send("hello")
        assert _answer(term.read_until(b"you> ")) == first  # a fresh conversation, greedy: same answer
        term.send("/nope")
        assert b"unknown command /nope" in term.read_until(b"you> ")
        term.send("/exit")
        assert term.proc.wait(timeout=60) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        os.close(term.master)


def test_kto_chat_in_a_terminal(tiny_model_dir):
    run_chat(tiny_model_dir)


def test_kto_chat_rejects_a_bad_path(tmp_path):
    proc = subprocess.run([*KTO, "chat", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "neither a model folder" in proc.stderr


# --------------------------------------------------------------------------------------------- GGUF


def test_gguf_generate_chat_and_stream(gguf_path):
    with KTOInference(gguf_path, n_ctx=512) as bot:
        assert bot.backend_name == "llama.cpp"
        answer = bot.chat(Q, temperature=0, max_new_tokens=12)
        assert answer and answer == bot.generate("What is machine learning?", temperature=0, max_new_tokens=12)
        pieces = list(bot.stream_chat(Q, temperature=0, max_new_tokens=12))
        assert len(pieces) > 1 and "".join(pieces) == answer
        raw = bot.generate("The capital of France", temperature=0, max_new_tokens=6, use_chat_template=False)
        assert raw and raw == bot.generate(
            "The capital of France", temperature=0, max_new_tokens=6, use_chat_template=False
        )
        # The chat template comes from the GGUF metadata and its special tokens are single tokens.
        tmpl = bot.backend.llm.metadata["tokenizer.chat_template"]
        assert "<|im_start|>" in tmpl
        assert bot.backend.llm.tokenize(b"<|im_start|>user", add_bos=False, special=True)[0] == 4


def test_gguf_and_transformers_see_the_same_chat_prompt(gguf_path, legacy_model_dir):
    """Same template, same token ids, so the F16 file's first greedy token equals the fp32 model's.

    (Only the first: on random weights the logits are flat, so longer greedy runs drift apart on
    F16 rounding; the GGUF export's own verification measures agreement properly.)
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    hf_bot = KTOInference(legacy_model_dir)
    with KTOInference(gguf_path, n_ctx=512) as bot:
        llm, tok = bot.backend.llm, hf_bot.backend.tokenizer
        for messages in (
            Q,
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": "Explain KTO training"},
            ],
        ):
            hf_ids = hf_bot.backend._inputs(messages, None)
            # What create_chat_completion feeds llama.cpp: the GGUF's template, rendered, tokenized.
            prompt = Jinja2ChatFormatter(
                llm.metadata["tokenizer.chat_template"], eos_token=tok.eos_token, bos_token=tok.bos_token
            )(messages=messages).prompt
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            assert ids == hf_ids["input_ids"][0].tolist()
            first = hf_bot.backend.model.generate(**hf_ids, max_new_tokens=1, do_sample=False)[0, -1].item()
            # Compare token ids, not text: a single byte-fallback token decodes to nothing on its own.
            assert next(llm.generate(ids, temp=0.0, reset=True)) == first


def test_kto_chat_on_gguf_in_a_terminal(gguf_path):
    run_chat(gguf_path, "--n-ctx", "512")
