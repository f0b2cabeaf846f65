"""The tiny preset: deterministic, a real Llama, a tokenizer with a chat template."""

from kto_pipeline.artifacts import dir_digest
from kto_pipeline.training.tiny import build_tiny_model


def test_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again")
    for pattern in ("*.safetensors", "tokenizer.model", "tokenizer.json", "config.json"):
        assert dir_digest(again, pattern) == dir_digest(tiny_model_dir, pattern), pattern


def test_tiny_model_is_a_llama_with_chat_template(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert (tiny_model_dir / "tokenizer.model").exists()  # SentencePiece, what llama.cpp's converter reads
    text = "The capital of France is Paris. Ünïcode 123!"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text  # byte fallback: lossless
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=False)
    # legacy SentencePiece behaviour (as llama.cpp): a word after a special token gets its "▁" prefix
    assert tok.decode(ids) == "<|im_start|> user\nHi<|im_end|> \n<|im_start|> assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_build_is_idempotent(tiny_model_dir):
    before = dir_digest(tiny_model_dir)
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert dir_digest(tiny_model_dir) == before
