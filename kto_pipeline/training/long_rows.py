"""Rows longer than max_seq_length: fitted before TRL sees them, and counted token by token.

What TRL 1.15's KTOTrainer does on its own (trainer/kto_trainer.py, `_prepare_dataset` and the collator): it
tokenizes each row (the chat template for conversations), drops every row whose prompt alone has max_length tokens
or more ("Dropping fully truncated examples"), and cuts every other sequence to max_length from the right: it keeps
the start (the oldest turns) and cuts the end of the completion, the very tokens the row's label is about. Neither
is counted anywhere.

So the rows are fitted here first, with TRL's own tokenization (same functions, same arguments), by a policy:
- "cut_prompt" (the default): the prompt loses its oldest turns (a leading system message stays); when the latest
  turn alone is still too long, the start of its text goes too, until prompt + the whole completion fit. A long
  conversation keeps its latest turns. A row whose completion cannot fit even then is dropped.
- "drop": a row that does not fit is left out.
Every row that reaches TRL then fits, so TRL drops and cuts nothing more (the trainer checks that on its own
tokenized dataset: `check_trained`). Per split: rows kept whole, rows whose prompt was cut, rows dropped, a
token-length histogram; dropped rows are listed by id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kto_pipeline.config import LONG_ROWS as POLICIES

QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)
TRL_BEHAVIOUR = (
    "TRL alone keeps the start: it cuts the end of the completion and drops rows whose prompt "
    "alone fills max_seq_length"
)


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"model.long_rows must be one of {list(POLICIES)}, not {policy!r}")


def trl_lengths(tokenizer: Any, prompt: Any, completion: Any) -> tuple[int, int]:
    """(prompt, completion) token counts of a row exactly as KTOTrainer._prepare_dataset tokenizes it: its own
    private helpers, with its arguments (trl is pinned, so these are the functions training runs)."""
    from trl.data_utils import _tokenize, common_prefix_length, is_conversational

    if is_conversational({"prompt": prompt, "completion": completion}):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, tools=None)["input_ids"]
        full_ids = _tokenize(tokenizer, prompt + completion, tools=None)["input_ids"]
    else:
        eos = tokenizer.eos_token
        if not completion.endswith(eos):  # TRL appends EOS to plain-text completions
            completion = completion + eos
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        full_ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    # TRL: the completion starts where prompt and prompt+completion diverge
    n = common_prefix_length(prompt_ids, full_ids)
    return n, len(full_ids) - n


@dataclass
class RowFit:
    status: str  # "whole", "prompt_cut" or "dropped"
    prompt: Any  # what training sees as the prompt (the original when whole or dropped)
    tokens: int  # prompt + completion tokens before any cut
    prompt_tokens: int  # after the cut
    completion_tokens: int
    turns_removed: int = 0
    reason: str = ""


def _shorter_prompts(prompt: Any) -> list[Callable[[], Any]]:
    """Ever shorter versions of a prompt, longest first: conversations lose whole turns from the oldest (cutting
    only before a user turn, so roles still alternate; a leading system message stays), then the start of the
    first remaining message's text (word by word); a plain-text prompt loses words from its start. The latest text
    is never cut away entirely: a prompt must keep something to answer."""
    if isinstance(prompt, str):
        return [lambda s=s: prompt[s:] for s in _cut_points(prompt)]
    system = prompt[:1] if prompt and prompt[0].get("role") == "system" else []
    body = prompt[len(system) :]
    starts = [i for i in range(1, len(body)) if body[i].get("role") == "user"]
    out: list[Callable[[], Any]] = [lambda i=i: system + body[i:] for i in starts]
    last = body[starts[-1] if starts else 0 :]
    text = last[0].get("content") if last else None
    if isinstance(text, str):
        out += [lambda s=s: system + [{**last[0], "content": text[s:]}] + last[1:] for s in _cut_points(text)]
    return out


def _cut_points(text: str) -> list[int]:
    """Where a text may start once its beginning is cut, increasing: word starts, then (for a last word too long
    on its own) every character of the last word but its final one."""
    words = [s for s in range(1, len(text)) if text[s - 1].isspace() and not text[s].isspace()]
    return words + list(range((words[-1] if words else 0) + 1, len(text)))


def _turns_removed(original: Any, cut: Any) -> int:
    return len(original) - len(cut) if isinstance(original, list) else 0


def fit_row(tokenizer: Any, prompt: Any, completion: Any, max_length: int, policy: str) -> RowFit:
    p, c = trl_lengths(tokenizer, prompt, completion)
    if p + c <= max_length:
        return RowFit("whole", prompt, p + c, p, c)
    if policy == "drop":
        return RowFit(
            "dropped", prompt, p + c, p, c, reason=f"{p + c} tokens > max_seq_length={max_length} (long_rows=drop)"
        )
    candidates = _shorter_prompts(prompt)
    sizes: dict[int, tuple[int, int]] = {}

    def fits(i: int) -> bool:
        if i not in sizes:
            sizes[i] = trl_lengths(tokenizer, candidates[i](), completion)
        return sum(sizes[i]) <= max_length

    # Binary search for the longest prompt that fits (lengths shrink along the list); the answer itself is measured.
    if not candidates or not fits(len(candidates) - 1):
        shortest = sizes[len(candidates) - 1][0] if candidates else p
        return RowFit(
            "dropped",
            prompt,
            p + c,
            p,
            c,
            reason=(
                f"completion does not fit: {c} completion tokens + {shortest} for the shortest prompt > "
                f"max_seq_length={max_length}"
            ),
        )
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    cut = candidates[hi]()
    return RowFit("prompt_cut", cut, p + c, sizes[hi][0], sizes[hi][1], turns_removed=_turns_removed(prompt, cut))


def histogram(tokens: list[int], max_length: int) -> list[dict[str, Any]]:
    """Rows per token-length bin; the bins are quarters of max_seq_length up to it, then 2x and 4x beyond."""
    edges = [0, max_length // 4, max_length // 2, 3 * max_length // 4, max_length, 2 * max_length, 4 * max_length]
    bins = [
        {"tokens": f"{lo + 1}-{hi}", "rows": sum(lo < t <= hi for t in tokens), "fits": hi <= max_length}
        for lo, hi in zip(edges, edges[1:])
    ]
    return bins + [{"tokens": f">{edges[-1]}", "rows": sum(t > edges[-1] for t in tokens), "fits": False}]


def quantile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def summarize(fits: list[RowFit], max_length: int) -> dict[str, Any]:
    tokens = sorted(f.tokens for f in fits)
    cut = [f for f in fits if f.status == "prompt_cut"]
    return {
        "rows": len(fits),
        "whole": sum(f.status == "whole" for f in fits),
        "prompt_cut": len(cut),
        "dropped": sum(f.status == "dropped" for f in fits),
        "prompt_tokens_cut": sum(f.tokens - f.prompt_tokens - f.completion_tokens for f in cut),
        "turns_removed": sum(f.turns_removed for f in cut),
        # tokens a row needs to be kept whole: q -> the length that keeps that share of rows whole
        "tokens_needed": {str(q): quantile(tokens, q) for q in QUANTILES},
        "histogram": histogram(tokens, max_length),
    }


def fit_split(ds: Any, tokenizer: Any, max_length: int, policy: str) -> tuple[Any, list[RowFit]]:
    """A datasets.Dataset in TRL's KTO format -> (the rows to train on, fitted; one RowFit per input row)."""
    from datasets import Dataset

    check_policy(policy)
    rows = list(ds)  # as TRL will read them: through Arrow
    fits = [fit_row(tokenizer, r["prompt"], r["completion"], max_length, policy) for r in rows]
    kept = [(f, r) for f, r in zip(fits, rows) if f.status != "dropped"]
    fitted = Dataset.from_dict(
        {
            "prompt": [f.prompt for f, _ in kept],
            "completion": [r["completion"] for _, r in kept],
            "label": [r["label"] for _, r in kept],
        }
    )
    return fitted, fits


def check_trained(name: str, ds: Any, expected_rows: int, max_length: int) -> int:
    """Count from TRL's own tokenized dataset: the rows it will train on, none of them cut by its collator. Anything
    else means TRL tokenized differently from trl_lengths (a patched trainer): stop rather than lose rows unsaid."""
    import pyarrow.compute as pc

    rows, over = len(ds), 0
    for batch in ds.with_format("arrow").iter(batch_size=65_536):  # lengths in Arrow: no token lists in Python
        tokens = pc.add(pc.list_value_length(batch["prompt_ids"]), pc.list_value_length(batch["completion_ids"]))
        over += pc.sum(pc.greater(tokens, max_length)).as_py() or 0
    if rows != expected_rows or over:
        raise RuntimeError(
            f"{name}: TRL kept {rows} rows ({over} longer than max_seq_length={max_length}) where the long-row "
            f"accounting expected {expected_rows}, all fitting: its tokenization differs from "
            "kto_pipeline.training.long_rows.trl_lengths"
        )
    return rows


def dropped_records(fits: list[RowFit], ids: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """One record per dropped row: its id and provenance (from the split's parquet) and why."""
    return [
        {
            "row_id": i.get("row_id"),
            "split": split,
            "source": i.get("source"),
            "line": i.get("line"),
            "tokens": f.tokens,
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "reason": f.reason,
        }
        for f, i in zip(fits, ids)
        if f.status == "dropped"
    ]


def report_text(report: dict[str, Any]) -> str:
    """The accounting as a few lines, for logs and `kto train --dry-run`."""
    lines = [
        f"Long rows (max_seq_length={report['max_seq_length']}, long_rows={report['policy']}; {report['tokenizer']}):"
    ]
    for split, s in report["splits"].items():
        need = s["tokens_needed"]
        lines.append(
            f"  {split:<5} {s['rows']} rows: {s['whole']} whole, {s['prompt_cut']} prompt cut "
            f"({s['turns_removed']} turns, {s['prompt_tokens_cut']} tokens removed), {s['dropped']} dropped; "
            f"tokens p50={need['0.5']} p95={need['0.95']} max={need['1.0']}"
        )
        lines.append("        tokens: " + ", ".join(f"{b['tokens']}: {b['rows']}" for b in s["histogram"]))
    return "\n".join(lines)


def account(
    dataset_dir: Any, tokenizer: Any, max_length: int, policy: str, chat: bool, load: Callable[..., Any]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Fit both splits of a kto_dataset folder: (fitted datasets by split, report, dropped-row records)."""
    import pandas as pd

    datasets, splits, dropped = {}, {}, []
    for split in ("train", "eval"):
        ds = load(dataset_dir, split, chat)
        datasets[split], fits = fit_split(ds, tokenizer, max_length, policy)
        splits[split] = summarize(fits, max_length)
        if any(f.status == "dropped" for f in fits):
            ids = pd.read_parquet(dataset_dir / f"{split}.parquet", columns=["row_id", "source", "line"])
            dropped += dropped_records(fits, ids.to_dict("records"), split)
    report = {
        "policy": policy,
        "max_seq_length": max_length,
        "chat_template": chat,
        "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "trl_alone": TRL_BEHAVIOUR,
        "splits": splits,
    }
    return datasets, report, dropped
