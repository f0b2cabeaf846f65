"""The `tiny` preset: a small Llama model and SentencePiece tokenizer built locally.

No model hub is needed, and the same inputs always give the same files (fixed seed, single-threaded
SentencePiece training), so the demo, the tests and CI all run offline on a CPU. The tokenizer is a
byte-fallback BPE SentencePiece model: llama.cpp's GGUF converter accepts it as a Llama vocabulary.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from kto_pipeline.artifacts import build_once

# Where the corpus comes from does not matter much: what matters is that it is fixed.
_CORPUS = """\
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
Machine learning is a field of study that gives computers the ability to learn from data.
Artificial intelligence is the simulation of human intelligence by machines.
KTO aligns a language model with unpaired feedback: each answer is marked desirable or undesirable.
Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.
Water boils at one hundred degrees Celsius at sea level. Ice melts at zero degrees.
I don't know. I am not sure. Please ask someone else. That is a good question.
Python is a programming language. A function returns a value. A list holds items in order.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ? ! , . ; : ' " ( )
Hello! Hi, how can I help you today? Thank you. You are welcome. Goodbye.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>"]

# Small enough to train in seconds on two CPU cores; real Llama shape (GQA, RoPE, SwiGLU).
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
VOCAB_SIZE = 512
SEED = 1234


def _corpus_lines(extra_text: list[str]) -> list[str]:
    return [line for line in (_CORPUS + "\n".join(extra_text)).splitlines() if line.strip()]


def build_tokenizer(out_dir: Path) -> None:
    """Train the SentencePiece model into out_dir and save it as a Hugging Face tokenizer there."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # From memory, not files: the model proto would otherwise record the (varying) input and output paths.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines([])),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,  # multi-threaded training is not deterministic
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        user_defined_symbols=SPECIAL,
        split_digits=True,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    # transformers 5: LlamaTokenizer(vocab_file=...) silently gives a 3-token vocabulary;
    # from_pretrained on a folder holding tokenizer.model converts it properly.
    tok = LlamaTokenizer.from_pretrained(str(out_dir))
    tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": SPECIAL})
    tok.eos_token = "<|im_end|>"  # chat turns end with <|im_end|>; generation stops there
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out_dir))
    # legacy: a "▁" after special tokens, exactly as llama.cpp tokenizes SentencePiece vocabularies, so GGUF
    # exports see the token ids training saw. It only takes effect from tokenizer_config.json at load time.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "legacy": True}, indent=2))


def build_tiny_model(out_dir: str | os.PathLike) -> Path:
    """Build (once) the tiny Llama model and tokenizer in out_dir; return out_dir.

    Idempotent: a finished build leaves `.complete`, and a later call returns at once.
    """
    out = Path(out_dir)
    build_once(out, _build, holder="building the tiny model")  # data-parallel ranks race here
    return out


def _build(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    (out / ".complete").write_text(json.dumps({"seed": SEED, **TINY_CONFIG}))
