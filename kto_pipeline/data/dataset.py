"""The KTO dataset: the union of validated files -> train/eval parquet, a quarantine, and a report.

Per-file validation (validate.py) already quarantined every row-level problem. Here the rules that
need all rows at once: "too long", exact duplicates (dropped, counted), conflicting duplicates (same
prompt and completion with both labels: every copy quarantined — there is no telling which is right)
and the grouped, stratified split. Two streaming passes over the validated files; in between only
fixed-width per-row keys live in memory (content hash, label, prompt id, length), never the text.

Invariant, checked on every build: records_in = valid + quarantined + duplicates_dropped.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from kto_pipeline.data.normalize import reason_category
from kto_pipeline.data.split import assign_eval
from kto_pipeline.data.validate import (
    QUARANTINE_SCHEMA,
    SAMPLES_PER_REASON,
    BackgroundWriter,
    ingest_file,
    iter_rows,
    read_reports,
    read_rows,
    row_ids,
)
from kto_pipeline.reports import DatasetReport

DEFAULT_MAX_CHARS = 50_000
# train.parquet / eval.parquet: what training reads (prompt, completion, label, messages) plus provenance.
SPLIT_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("label", pa.bool_()),
        ("messages", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("row_id", pa.string()),
        ("prompt_id", pa.int64()),
        ("split", pa.string()),
    ]
)
TRAIN, EVAL, DUPLICATE, TOO_LONG, CONFLICT = range(5)
_KEY_COLUMNS = ["row_key", "label", "prompt_id", "chars"]


def build_kto_dataset(
    sources: Iterable[Path],
    out_dir: Path,
    *,
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_chars: int = DEFAULT_MAX_CHARS,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Validate raw files (through the cache in cache_dir, or a throwaway one) and build the dataset."""
    sources = [Path(s) for s in sources]
    if not sources:
        raise ValueError("no input files: put files in the raw data folder or pass --local-file")
    with tempfile.TemporaryDirectory(prefix="kto_validated_") as scratch:
        root = Path(cache_dir) if cache_dir else Path(scratch)
        folders = [ingest_file(s, root, keep_original=cache_dir is not None)[0] for s in sources]
        return build_from_validated(folders, out_dir, eval_fraction=eval_fraction, seed=seed, max_chars=max_chars)


def _keys(folders: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (content hash as 2 x uint64, label, prompt id, length) over all folders, in order."""
    keys, labels, pids, chars = [], [], [], []
    for folder in folders:
        t = read_rows(folder, _KEY_COLUMNS)
        for chunk in t.column("row_key").chunks:
            raw = np.frombuffer(chunk.buffers()[1], np.uint64)[chunk.offset * 2 : (chunk.offset + len(chunk)) * 2]
            keys.append(raw.reshape(-1, 2))
        labels.append(t.column("label").to_numpy())
        pids.append(t.column("prompt_id").to_numpy())
        chars.append(t.column("chars").to_numpy())
    if not labels:
        return np.zeros((0, 2), np.uint64), np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return (
        np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64),
        np.concatenate(labels).astype(bool),
        np.concatenate(pids),
        np.concatenate(chars),
    )


def _runs(key: np.ndarray, label: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact duplicate/conflict analysis of `rows` (ascending indices).

    Returns (keep, conflict) masks over `rows`: keep marks the first row of each (content, label)
    run — the earliest file and line win; conflict marks kept rows whose content carries both labels.
    """
    order = np.lexsort((label[rows], key[rows, 1], key[rows, 0]))  # stable: ties keep index order
    k, lab = key[rows[order]], label[rows[order]]
    new_content = np.ones(len(order), dtype=bool)
    new_content[1:] = (k[1:, 0] != k[:-1, 0]) | (k[1:, 1] != k[:-1, 1])
    new_run = new_content.copy()
    new_run[1:] |= lab[1:] != lab[:-1]
    content_id = np.cumsum(new_content) - 1
    runs_per_content = np.bincount(content_id[new_run], minlength=int(content_id[-1]) + 1 if len(order) else 0)
    keep, conflict = np.zeros(len(rows), bool), np.zeros(len(rows), bool)
    keep[order] = new_run
    conflict[order] = new_run & (runs_per_content[content_id] > 1)
    return keep, conflict


def _outcomes(
    folders: list[Path], eval_fraction: float, seed: int, max_chars: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Pass 1: an outcome code per row (TRAIN, EVAL, DUPLICATE, TOO_LONG, CONFLICT), labels, data version."""
    key, label, prompt_id, chars = _keys(folders)
    code = np.full(len(label), TOO_LONG, dtype=np.int8)
    cand = np.flatnonzero(chars <= max_chars)
    # Duplicates and conflicts share the first 64 bits of the content hash, so one sort by those
    # bits puts every candidate next to its twins; only rows in such runs need the exact analysis.
    order = cand[np.argsort(key[cand, 0], kind="stable")]
    h1 = key[order, 0]
    twin = np.zeros(len(order), dtype=bool)
    same = h1[1:] == h1[:-1]
    twin[1:] |= same
    twin[:-1] |= same
    code[order[~twin]] = TRAIN
    shared = np.sort(order[twin])
    if len(shared):
        keep, conflict = _runs(key, label, shared)
        code[shared] = DUPLICATE
        code[shared[keep]] = TRAIN
        code[shared[conflict]] = CONFLICT
    valid = order[code[order] == TRAIN]  # ordered by content hash: the data version needs no other sort
    to_eval = assign_eval(prompt_id[valid], label[valid], eval_fraction, seed)
    code[valid] = np.where(to_eval, EVAL, TRAIN)
    # The data version: a hash of the rows (content, label, side of the split), independent of order.
    h = xxhash.xxh3_128()
    h.update(np.ascontiguousarray(key[valid]).tobytes())
    h.update(np.packbits(label[valid]).tobytes())
    h.update(np.packbits(to_eval).tobytes())
    return code, label, h.hexdigest()[:16]


def _split_rows(rows: pa.Table, split: str) -> pa.Table:
    return pa.table(
        {
            **{k: rows.column(k) for k in ("prompt", "completion", "label", "messages")},
            "source": rows.column("source").cast(pa.string()),
            "line": rows.column("line"),
            "row_id": row_ids(rows.column("row_key").combine_chunks()),
            "prompt_id": rows.column("prompt_id"),
            "split": pa.repeat(pa.scalar(split, pa.string()), rows.num_rows),
        },
        schema=SPLIT_SCHEMA,
    )


def _quarantine_rows(rows: pa.Table, codes: np.ndarray, max_chars: int) -> list[dict[str, Any]]:
    out = []
    rows = rows.append_column("row_id", row_ids(rows.column("row_key").combine_chunks()))
    for r, c in zip(rows.to_pylist(), codes.tolist()):
        if c == TOO_LONG:
            field = max(("prompt", "completion"), key=lambda k: len(r[k]))
            reason = f"too long: {field} has {len(r[field])} characters (max_chars={max_chars})"
        else:
            reason = (
                f"conflicting duplicate: the same prompt and completion is also labelled "
                f"{'undesirable' if r['label'] else 'desirable'} (row_id {r['row_id']})"
            )
        raw = {k: r[k] for k in ("prompt", "completion", "label")}
        if r["messages"] is not None:
            raw["messages"] = json.loads(r["messages"])
        out.append(
            {"source": r["source"], "line": r["line"], "reason": reason, "raw": json.dumps(raw, ensure_ascii=False)}
        )
    return out


def build_from_validated(
    folders: Iterable[Path],
    out_dir: Path,
    *,
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> dict[str, Any]:
    """Union validated folders (from validate.ingest_file) into out_dir/{train,eval,quarantine}.parquet."""
    folders = [Path(f) for f in folders]
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = read_reports(folders)
    code, label, version = _outcomes(folders, eval_fraction, seed, max_chars)

    reasons: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    for rep in reports:
        reasons.update(rep.reasons)
        samples.extend(rep.samples)
    offset = 0
    text = dict(use_dictionary=["source", "split"], write_statistics=["label", "line", "prompt_id"])
    with (
        BackgroundWriter(out_dir / "train.parquet", SPLIT_SCHEMA, **text) as train_out,
        BackgroundWriter(out_dir / "eval.parquet", SPLIT_SCHEMA, **text) as eval_out,
        pq.ParquetWriter(out_dir / "quarantine.parquet", QUARANTINE_SCHEMA) as bad_out,
    ):
        for folder in folders:
            for b in pq.ParquetFile(folder / "quarantine.parquet").iter_batches(batch_size=65_536):
                bad_out.write_batch(b)
            for b in iter_rows(folder):
                rows = pa.Table.from_batches([b])
                c = code[offset : offset + rows.num_rows]
                offset += rows.num_rows
                for target, side, name in ((train_out, TRAIN, "train"), (eval_out, EVAL, "eval")):
                    sel = c == side
                    if sel.all():
                        target.write_table(_split_rows(rows, name))
                    elif sel.any():
                        target.write_table(_split_rows(rows.filter(pa.array(sel)), name))
                sel = (c == TOO_LONG) | (c == CONFLICT)
                if sel.any():
                    bad = _quarantine_rows(rows.filter(pa.array(sel)), c[sel], max_chars)
                    bad_out.write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
                    for r in bad:
                        cat = reason_category(r["reason"])
                        reasons[cat] += 1
                        if reasons[cat] <= SAMPLES_PER_REASON:
                            samples.append({**r, "raw": r["raw"][:500]})

    is_train, is_eval = code == TRAIN, code == EVAL
    valid = is_train | is_eval
    report: dict[str, Any] = {
        "records_in": sum(r.records_in for r in reports),
        "valid": int(valid.sum()),
        "quarantined": sum(r.quarantined for r in reports) + int(((code == TOO_LONG) | (code == CONFLICT)).sum()),
        "duplicates_dropped": int((code == DUPLICATE).sum()),
        "train_rows": int(is_train.sum()),
        "eval_rows": int(is_eval.sum()),
        "n_desirable": int(label[valid].sum()),
        "n_undesirable": int((~label[valid]).sum()),
        "train_desirable": int(label[is_train].sum()),
        "train_undesirable": int((~label[is_train]).sum()),
        "eval_desirable": int(label[is_eval].sum()),
        "eval_undesirable": int((~label[is_eval]).sum()),
        "reasons": dict(sorted(reasons.items())),
        "samples": samples,
        "data_version": version,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "max_chars": max_chars,
        "sources": [
            {k: getattr(r, k) for k in ("source", "digest", "records_in", "valid", "quarantined")} for r in reports
        ],
    }
    # What training will use unless the user sets the weights (trainer.kto_weights: same rule, train rows).
    report["recommended_weights"] = label_balance(report["train_desirable"], report["train_undesirable"])
    if report["records_in"] != report["valid"] + report["quarantined"] + report["duplicates_dropped"]:
        raise AssertionError(f"row accounting broke: {report}")  # never silently lose a row
    DatasetReport.of(report).write(out_dir)
    return report


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
