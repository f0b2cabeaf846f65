"""The pinned evaluation set: prompts (some with labelled completions) that are never trained on.

A file or a folder of files in any training-data format, read by data/readers.py and checked by the rules
of data/normalize.py, so bad rows get the same reasons and the same file:line quarantine as training data.
A record with a `label` (or a `completion`) is a labelled row and must pass `normalize` exactly as in
training; a record with only a prompt (`prompt` text or messages, or a conversation that stops before the
assistant's turn) is a prompt to generate for. Exact duplicate rows are dropped and counted; the same
prompt and completion under both labels is quarantined (every copy), as in the training dataset.

Distinct prompts are told apart exactly (same text, or same turns, system turn included). The
matching rule between evaluation prompts and training rows is looser (`prompt_key`): the prompt's user-visible
turns — a plain prompt is one user turn; system turns are left out, so the same question under another
system prompt is still the same question — each turn's text NFKC-normalised, case-folded and with runs of
whitespace collapsed to one space, then hashed with its role. "What is  KTO?" and "what is kto?" match.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import xxhash

from kto_pipeline.data.dataset import DEFAULT_MAX_CHARS
from kto_pipeline.data.normalize import BadRow, normalize, normalize_prompt, reason_category
from kto_pipeline.data.readers import DataFileError, NeedExactCsv, is_supported, read_batches
from kto_pipeline.data.validate import QUARANTINE_SCHEMA, SAMPLES_PER_REASON

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class EvalPrompt:
    """One distinct evaluation prompt."""

    key: str  # exact identity (the turns, or the text): distinct prompts of the set
    match_key: str  # prompt_key(): what training rows are matched against
    prompt: str  # plain-text view (rendered turns for conversations)
    messages: Messages | None  # the chat turns, or None for a plain prompt
    source: str
    line: int  # where the prompt first appears

    @property
    def turns(self) -> Messages:
        """What a chat model is given: the turns, or the plain prompt as one user turn (as in training)."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class LabelledRow:
    """A completion of an evaluation prompt with its desirable/undesirable label."""

    prompt_index: int  # into EvalSet.prompts
    completion: str
    label: bool
    source: str
    line: int


@dataclass
class EvalSet:
    prompts: list[EvalPrompt]
    rows: list[LabelledRow]
    quarantine: pa.Table  # data/validate.py's QUARANTINE_SCHEMA: source, line, reason, raw
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        """The match keys of its prompts, for exclude_eval_prompts."""
        return {p.match_key for p in self.prompts}


def _norm_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_key(prompt: str, messages: str | Messages | None) -> str:
    """The matching key of a prompt (plain text, or its turns as a list or as the JSON training rows carry)."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    turns = messages if messages else [{"role": "user", "content": prompt}]
    visible = [[t["role"], _norm_text(t["content"])] for t in turns if t["role"] != "system"]
    return xxhash.xxh3_64_hexdigest(json.dumps(visible, ensure_ascii=False).encode())


def exclude_eval_prompts(frame: pd.DataFrame, keys: set[str]) -> tuple[pd.DataFrame, int]:
    """Drop the rows of a training frame (columns prompt, messages) whose prompt is an evaluation prompt.

    Returns (the remaining rows, how many were removed).
    """
    if frame.empty or not keys:
        return frame, 0
    messages = frame["messages"] if "messages" in frame else [None] * len(frame)
    hit = [prompt_key(p, m if isinstance(m, str) else None) in keys for p, m in zip(frame["prompt"], messages)]
    mask = pd.Series(hit, index=frame.index)
    return frame[~mask], int(mask.sum())


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_supported(p))
        if not files:
            raise DataFileError(f"{path}: no data files in this evaluation set folder")
        return files
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    return [path]


def _records(path: Path) -> Iterator[tuple[int, Any, str | None, str]]:
    """(line, record, read error, raw text) of every record, as the readers give them."""
    try:
        batches = list(read_batches(path))
    except NeedExactCsv:  # a ragged CSV row: only the exact reader places it on its line (as validate does)
        batches = list(read_batches(path, exact_csv=True))
    for batch in batches:
        for part in batch.parts:
            for i in range(part.table.num_rows):
                yield (int(part.lines[i]), *part.record_at(i))
        yield from batch.items


def _normalize(record: Any) -> dict[str, Any]:
    if isinstance(record, dict) and "label" not in record and "completion" not in record:
        return normalize_prompt(record)
    return normalize(record)


def _too_long(row: dict[str, Any], max_chars: int) -> str | None:
    field_, size = max(((k, len(row.get(k) or "")) for k in ("prompt", "completion")), key=lambda kv: kv[1])
    return f"too long: {field_} has {size} characters (max_chars={max_chars})" if size > max_chars else None


def load_eval_set(path: str | os.PathLike, *, max_chars: int = DEFAULT_MAX_CHARS) -> EvalSet:
    """Read and validate an evaluation set (a file, or every supported file under a folder, in name order).

    Raises DataFileError when a file cannot be read at all or nothing valid is left; bad rows never raise,
    they go to `quarantine` with their file, line and reason.
    """
    path = Path(path)
    prompts: list[EvalPrompt] = []
    index: dict[str, int] = {}
    rows: list[LabelledRow] = []
    raws: list[str] = []  # each labelled row's raw text, for the quarantine of conflicting ones
    seen: dict[tuple[int, str], dict[bool, list[int]]] = {}  # (prompt, completion) -> label -> row numbers
    bad: list[dict[str, Any]] = []
    records_in = duplicates = 0
    for file in _files(path):
        source = str(file)
        for line, record, error, raw in _records(file):
            records_in += 1
            try:
                if error is not None:
                    raise BadRow(error)
                row = _normalize(record)
                reason = _too_long(row, max_chars)
                if reason:
                    raise BadRow(reason)
            except BadRow as e:
                bad.append({"source": source, "line": line, "reason": str(e), "raw": raw})
                continue
            messages = json.loads(row["messages"]) if row["messages"] else None
            key = xxhash.xxh3_64_hexdigest((row["messages"] or row["prompt"]).encode())
            new_prompt = key not in index
            if new_prompt:
                index[key] = len(prompts)
                match = prompt_key(row["prompt"], messages)
                prompts.append(EvalPrompt(key, match, row["prompt"], messages, source, line))
            if "label" not in row:
                duplicates += not new_prompt
                continue
            labels = seen.setdefault((index[key], row["completion"]), {})
            if row["label"] in labels:
                duplicates += 1
                continue
            labels[row["label"]] = [len(rows)]
            rows.append(LabelledRow(index[key], row["completion"], row["label"], source, line))
            raws.append(raw)
    rows = _drop_conflicts(rows, raws, seen, bad)
    if not prompts:
        raise DataFileError(f"{path}: no valid evaluation prompt ({len(bad)} rows quarantined)")
    report = _report(path, prompts, rows, bad, records_in, duplicates)
    return EvalSet(prompts, rows, pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA), report)


def _drop_conflicts(
    rows: list[LabelledRow], raws: list[str], seen: dict, bad: list[dict[str, Any]]
) -> list[LabelledRow]:
    """Quarantine every copy of a (prompt, completion) labelled both ways: there is no telling which is right."""
    conflicted = {i for labels in seen.values() if len(labels) > 1 for ids in labels.values() for i in ids}
    for i in sorted(conflicted):
        r = rows[i]
        bad.append(
            {
                "source": r.source,
                "line": r.line,
                "reason": "conflicting duplicate: the same prompt and completion is also labelled "
                f"{'undesirable' if r.label else 'desirable'}",
                "raw": raws[i],
            }
        )
    return [r for i, r in enumerate(rows) if i not in conflicted]


def _report(
    path: Path, prompts: list[EvalPrompt], rows: list[LabelledRow], bad: list[dict], records_in: int, duplicates: int
) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    samples = []
    for r in bad:
        cat = reason_category(r["reason"])
        reasons[cat] += 1
        if reasons[cat] <= SAMPLES_PER_REASON:
            samples.append({**r, "raw": r["raw"][:500]})
    h = xxhash.xxh3_128()  # the set's version: its prompts and labelled rows, in order
    for p in prompts:
        h.update(p.key.encode())
    for r in rows:
        h.update(json.dumps([r.prompt_index, r.completion, r.label], ensure_ascii=False).encode())
    labelled_prompts = len({r.prompt_index for r in rows})
    return {
        "path": str(path),
        "records_in": records_in,
        "prompts": len(prompts),
        "labelled_rows": len(rows),
        "labelled_prompts": labelled_prompts,
        "n_desirable": sum(r.label for r in rows),
        "n_undesirable": sum(not r.label for r in rows),
        "quarantined": len(bad),
        "duplicates_dropped": duplicates,
        "reasons": dict(sorted(reasons.items())),
        "samples": samples,
        "version": h.hexdigest()[:16],
    }


def freeze_eval_split(eval_split: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, bool]:
    """Write a dataset's eval split (its eval.parquet) as the evaluation set file `dest` (JSON Lines).

    Never overwrites: when `dest` exists (frozen by an earlier run, or a racing one) it is left as it is.
    Returns (dest, whether this call wrote it). Written to a temporary file, fsynced, then hard-linked into
    place, which fails if the name was taken meanwhile, so readers only ever see a complete file.
    """
    dest, eval_split = Path(dest), Path(eval_split)
    if dest.exists():
        return dest, False
    df = pd.read_parquet(eval_split, columns=["prompt", "completion", "label", "messages", "source", "line"])
    if df.empty:
        raise ValueError(f"{eval_split}: the eval split is empty: nothing to freeze (eval_fraction is 0?)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in df.itertuples(index=False):
                prompt = json.loads(r.messages) if isinstance(r.messages, str) else r.prompt
                record = {"prompt": prompt, "completion": r.completion, "label": bool(r.label)}
                f.write(json.dumps({**record, "origin": f"{r.source}:{r.line}"}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return dest, False
        return dest, True
    finally:
        os.unlink(tmp)
