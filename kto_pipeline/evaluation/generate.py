"""Greedy answers to many prompts from one loaded Hugging Face model, in batches.

Each prompt is tokenized on its own, exactly as `KTOInference` does for one prompt (the chat template with
the generation prompt, or the raw text when it is a string and the model has no template), then batches
of similar length are left-padded together: with the attention mask, a row's answer does not depend on
its neighbours, so batched output is the one-by-one output (up to float rounding near ties).
Greedy and a fixed `max_new_tokens` make the answers a fixed function of the weights, comparable across
models and runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Generation:
    text: str  # the answer, special tokens removed
    stopped: bool  # the model ended the answer itself (an end-of-turn/end-of-sequence token) within the limit
    tokens: int  # tokens of the answer, the stop token excluded


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends an answer: the generation config's eos ids and the tokenizer's eos."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def prompt_ids(tokenizer: Any, prompt: Messages | str) -> list[int]:
    """Token ids of one prompt as the model sees it before its answer."""
    if isinstance(prompt, str) and not getattr(tokenizer, "chat_template", None):
        return tokenizer(prompt)["input_ids"]
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: pass prompts as plain strings")
    enc = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages | str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[Generation]:
    """Greedy answers to `prompts` (chat turns, or strings: one user turn with a chat template), in order."""
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    out: list[Generation | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.inference_mode(), _eval_mode(model):
            seqs = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=stops,
                pad_token_id=pad,
            )
        for row, i in enumerate(batch):
            out[i] = _answer(tokenizer, seqs[row, width:].tolist(), stops, max_new_tokens)
    return out  # type: ignore[return-value]


def _answer(tokenizer: Any, new: list[int], stops: list[int], max_new_tokens: int) -> Generation:
    end = next((k for k, t in enumerate(new[:max_new_tokens]) if t in stops), None)
    kept = new[:end] if end is not None else new[:max_new_tokens]
    return Generation(tokenizer.decode(kept, skip_special_tokens=True), end is not None, len(kept))


@contextlib.contextmanager
def _eval_mode(model: Any):
    """Dropout off while generating; the caller's mode back afterwards (a policy may be mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
