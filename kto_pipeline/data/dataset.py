"""Build the validated KTO dataset: train/eval parquet, a quarantine of bad rows, and a report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from kto_pipeline.data.normalize import BadRow, normalize

ROW_SCHEMA = pa.schema([("prompt", pa.string()), ("completion", pa.string()), ("label", pa.bool_()),
                        ("messages", pa.string()), ("source", pa.string()), ("line", pa.int64()), ("row_id", pa.string()),
                        ("split", pa.string())])
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
                               ("raw", pa.string())])


def _row_id(prompt: str, completion: str, label: bool) -> str:
    return hashlib.sha256(json.dumps([prompt, completion, label]).encode()).hexdigest()[:16]


def _read_jsonl(path: Path) -> Iterable[tuple[int, Any, str | None]]:
    """Yield (line number, parsed record or None, error or None) for each non-blank line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read file: {e.strerror}") from None
    for n, raw in enumerate(data.splitlines(), start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            yield n, raw.decode("utf-8", "replace"), "not UTF-8"
            continue
        try:
            yield n, json.loads(text), None
        except json.JSONDecodeError as e:
            yield n, text, f"malformed JSON: {e.msg} at column {e.colno}"


def _split_of(prompt: str, eval_fraction: float, seed: int) -> str:
    # Grouped by prompt: one prompt never sits on both sides of the split.
    h = int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < eval_fraction else "train"


def build_kto_dataset(sources: list[Path], out_dir: Path, *, eval_fraction: float = 0.1,
                      seed: int = 42) -> dict[str, Any]:
    """Validate every row of the sources into out_dir/{train,eval,quarantine}.parquet + report.json."""
    if not sources:
        raise ValueError("no input files: put JSONL files in the raw data directory or pass --local-file")
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates = 0
    for path in sources:
        for line, record, error in _read_jsonl(Path(path)):
            if error is None:
                try:
                    row = normalize(record)
                except BadRow as e:
                    error = str(e)
            if error is not None:
                raw = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
                bad.append({"source": str(path), "line": line, "reason": error, "raw": raw})
                continue
            row["row_id"] = _row_id(row["prompt"], row["completion"], row["label"])
            if row["row_id"] in seen:
                duplicates += 1
                continue
            seen.add(row["row_id"])
            rows.append({**row, "source": str(path), "line": line,
                         "split": _split_of(row["prompt"], eval_fraction, seed)})
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        part = [r for r in rows if r["split"] == split]
        pq.write_table(pa.Table.from_pylist(part, schema=ROW_SCHEMA), out_dir / f"{split}.parquet")
    pq.write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA), out_dir / "quarantine.parquet")
    n_desirable = sum(r["label"] for r in rows)
    report = {
        "records_in": len(rows) + len(bad) + duplicates,
        "valid": len(rows),
        "quarantined": len(bad),
        "duplicates_dropped": duplicates,
        "train_rows": sum(r["split"] == "train" for r in rows),
        "eval_rows": sum(r["split"] == "eval" for r in rows),
        "n_desirable": n_desirable,
        "n_undesirable": len(rows) - n_desirable,
        "reasons": _count(b["reason"].split(":")[0] for b in bad),
        "data_version": hashlib.sha256("".join(sorted(seen)).encode()).hexdigest()[:16],
        "sources": [str(p) for p in sources],
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def label_balance(n_desirable: int, n_undesirable: int) -> dict[str, float]:
    """Desirable share and KTO weights per the paper: w_d*n_d / (w_u*n_u) in [1, 4/3].

    The minority class is up-weighted (the other weight stays 1) so the ratio lands at the band's middle.
    """
    total = n_desirable + n_undesirable
    share = n_desirable / total if total else 0.0
    if n_desirable == 0 or n_undesirable == 0:
        return {"desirable_share": share, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    target = 7 / 6  # middle of [1, 4/3]
    ratio = n_desirable / n_undesirable
    if ratio < 1:
        dw, uw = target / ratio, 1.0
    elif ratio > 4 / 3:
        dw, uw = 1.0, ratio / target
    else:
        dw, uw = 1.0, 1.0
    return {"desirable_share": share, "desirable_weight": round(dw, 4), "undesirable_weight": round(uw, 4)}
