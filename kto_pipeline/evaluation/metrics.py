"""What a KTO run did to a model, in numbers: degeneration of its answers, and what it prefers on labelled rows.

Implicit reward (KTO, as TRL 1.15 computes it): r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)), log-probs summed
over the completion's tokens, tokenized as TRL's KTOTrainer does (the chat template for chat models; prompt +
completion + eos for plain ones), scored through the same chunked LM-head kernel training falls back to
(training/torch_logprob.py), so no [batch, seq, vocab] logits tensor is built. The reference (base) model
is pi_ref.

Reward accuracy: a labelled row is right when its reward is on the label's side of the reference point
z0 (above for desirable, below for undesirable); a reward exactly at z0 counts half (the reference model
scored against itself is at chance, not at the undesirable share). The reference point is, by default,
KTO's own: z0 = beta * KL, KL = max(0, mean over mismatched pairs of log(pi/pi_ref)), the pairs built as TRL
does, each prompt with the previous row's completion (rotated by one over all rows here, not per batch).
`reference_point="zero"` uses z0 = 0 (the sign of TRL's reported rewards; what apo_zero_unpaired uses).
The 95% interval is a percentile bootstrap (numpy, seeded), resampling prompts when groups are given, since
rows of one prompt are not independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kto_pipeline.evaluation.generate import Generation, Messages

REFERENCE_POINTS = ("kl", "zero")


# ---- degeneration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Degeneration:
    answers: int
    empty: float  # share of answers that are blank
    hit_limit: float  # share that ran into max_new_tokens without ending by themselves
    repeated_ngrams: float  # share of word n-grams that repeat an earlier n-gram of the same answer (pooled)
    mean_tokens: float  # mean answer length in tokens


def repeated_ngrams(text: str, n: int = 4) -> tuple[int, int]:
    """(repeated, total) word n-grams of one answer: a looping answer repeats most of its n-grams."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) - len(set(grams)), len(grams)


def degeneration(generations: Sequence[Generation], n: int = 4) -> Degeneration:
    """The failure modes a bad KTO run produces: empty answers, endless answers, loops."""
    if not generations:
        raise ValueError("no generations to measure")
    counts = np.array([repeated_ngrams(g.text, n) for g in generations]).reshape(-1, 2)
    total = int(counts[:, 1].sum())
    return Degeneration(
        answers=len(generations),
        empty=float(np.mean([not g.text.strip() for g in generations])),
        hit_limit=float(np.mean([not g.stopped for g in generations])),
        repeated_ngrams=float(counts[:, 0].sum() / total) if total else 0.0,
        mean_tokens=float(np.mean([g.tokens for g in generations])),
    )


# ---- log-probs ----------------------------------------------------------------------------------------


def _prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def tokenize_row(tokenizer: Any, prompt: Messages, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as TRL's KTOTrainer builds them (the completion starts where the tokenized
    prompt and prompt+completion part)."""
    if getattr(tokenizer, "chat_template", None):

        def ids(turns: Messages, gen: bool) -> list[int]:
            kw = dict(add_generation_prompt=gen, tokenize=True, return_dict=True)
            return list(tokenizer.apply_chat_template(turns, **kw)["input_ids"])

        p, full = ids(prompt, True), ids([*prompt, {"role": "assistant", "content": completion}], False)
    else:
        text = "\n".join(t["content"] for t in prompt)
        p, full = tokenizer(text)["input_ids"], tokenizer(text + completion + tokenizer.eos_token)["input_ids"]
    k = _prefix(p, full)
    return full[:k], full[k:]


def completion_logps(
    model: Any, tokenizer: Any, prompts: Sequence[Messages], completions: Sequence[str], *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (sum of the completion's token log-probs under `model`, number of completion tokens)."""
    import torch

    from kto_pipeline.training.torch_logprob import TorchChunkedLogProb

    rows = [tokenize_row(tokenizer, p, c) for p, c in zip(prompts, completions)]
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    cfg = model.config
    softcap, scale = getattr(cfg, "final_logit_softcapping", None), getattr(cfg, "logit_scale", None) or 1.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, counts = np.zeros(len(rows)), np.array([len(c) for _, c in rows])
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in batch)
        tail = max(len(c) for _, c in batch)  # left padding: every completion ends the row, in the last `tail`
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros((len(batch), tail), dtype=torch.bool)
        for r, (p, c) in enumerate(batch):
            ids[r, width - len(p) - len(c) :] = torch.tensor(p + c)
            mask[r, width - len(p) - len(c) :] = 1
            scored[r, tail - len(c) :] = True
        with torch.inference_mode():
            hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            h = hidden[:, width - tail - 1 : width - 1][scored.to(device)]  # position t predicts token t + 1
            targets = ids[:, width - tail :][scored].to(device)
            logp = TorchChunkedLogProb.apply(h, head.weight, head.bias, targets, 1.0, None, softcap, scale, ())[0]
        per_row = torch.zeros(len(batch), dtype=torch.float64).index_add_(
            0, torch.nonzero(scored)[:, 0], logp.double().cpu()
        )
        sums[start : start + len(batch)] = per_row.numpy()
    return sums, counts


# ---- reward accuracy ----------------------------------------------------------------------------------


def bootstrap_interval(
    values: np.ndarray, groups: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling whole groups when given)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        raise ValueError("no values to bootstrap")
    _, inverse = np.unique(np.arange(len(values)) if groups is None else np.asarray(groups), return_inverse=True)
    sums, sizes = np.bincount(inverse, weights=values), np.bincount(inverse)
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[pick].sum(1) / sizes[pick].sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class RewardAccuracy:
    accuracy: float  # share of labelled rows whose reward is on the label's side of the reference point
    low: float  # 95% bootstrap interval of the accuracy
    high: float
    rows: int
    reference_point: str  # "kl" or "zero"
    kl: float  # the KL estimate z0 / beta (0 with reference_point="zero")
    reward_margin: float  # mean reward of desirable rows minus undesirable ones (TRL's rewards/margins)
    logprob_margin: float  # the policy's mean per-token log-prob, desirable minus undesirable completions
    rewards: tuple[float, ...]  # per row, beta * log(pi/pi_ref)
    correct: tuple[float, ...]  # per row: 1 right, 0 wrong, 0.5 at the reference point


def _margin(values: np.ndarray, labels: np.ndarray) -> float:
    if labels.all() or not labels.any():
        return float("nan")  # one class only: no margin to speak of
    return float(values[labels].mean() - values[~labels].mean())


def reward_accuracy(
    logratios: np.ndarray,
    labels: np.ndarray,
    *,
    beta: float,
    kl: float = 0.0,
    reference_point: str = "kl",
    policy_logps: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> RewardAccuracy:
    """Accuracy of the implicit reward from per-row log(pi/pi_ref) (see the module docstring for the rule)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if reference_point not in REFERENCE_POINTS:
        raise ValueError(f"reference_point must be one of {REFERENCE_POINTS}, got {reference_point!r}")
    logratios, labels = np.asarray(logratios, dtype=float), np.asarray(labels, dtype=bool)
    if not len(labels):
        raise ValueError("no labelled rows to score")
    kl = max(0.0, kl) if reference_point == "kl" else 0.0
    rewards = beta * logratios
    side = np.sign(rewards - beta * kl) * np.where(labels, 1, -1)
    correct = (side + 1) / 2  # 1 right side, 0 wrong side, 0.5 at z0
    low, high = bootstrap_interval(correct, groups, seed=seed)
    per_token = None if policy_logps is None else np.asarray(policy_logps) / np.maximum(np.asarray(tokens), 1)
    return RewardAccuracy(
        accuracy=float(correct.mean()),
        low=low,
        high=high,
        rows=len(labels),
        reference_point=reference_point,
        kl=kl,
        reward_margin=_margin(rewards, labels),
        logprob_margin=float("nan") if per_token is None else _margin(per_token, labels),
        rewards=tuple(rewards.tolist()),
        correct=tuple(correct.tolist()),
    )


def score_labelled(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    completions: Sequence[str],
    labels: Sequence[bool],
    *,
    beta: float,
    reference_point: str = "kl",
    groups: Sequence[Any] | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> RewardAccuracy:
    """Reward accuracy and margins of `policy` against `reference` on labelled rows (one tokenizer for both)."""
    if reference_point not in REFERENCE_POINTS:
        raise ValueError(f"reference_point must be one of {REFERENCE_POINTS}, got {reference_point!r}")
    pi, tokens = completion_logps(policy, tokenizer, prompts, completions, batch_size=batch_size)
    ref, _ = completion_logps(reference, tokenizer, prompts, completions, batch_size=batch_size)
    kl = 0.0
    if reference_point == "kl" and len(completions) > 1:
        shifted = [completions[i - 1] for i in range(len(completions))]  # TRL's pairing: x_i with y_(i-1)
        kl_pi, _ = completion_logps(policy, tokenizer, prompts, shifted, batch_size=batch_size)
        kl_ref, _ = completion_logps(reference, tokenizer, prompts, shifted, batch_size=batch_size)
        kl = float(np.mean(kl_pi - kl_ref))
    return reward_accuracy(
        pi - ref,
        np.asarray(labels, dtype=bool),
        beta=beta,
        kl=kl,
        reference_point=reference_point,
        policy_logps=pi,
        tokens=tokens,
        groups=None if groups is None else np.asarray(groups),
        seed=seed,
    )
