"""Data benchmark: a generated N-row JSONL validated end to end, streaming pipeline vs a naive baseline.

    python benchmarks/data_bench.py --rows 1000000            # both, results as a markdown table
    python benchmarks/data_bench.py --rows 200000 --skip-baseline

"End to end" = what the Dagster assets do for a new file: digest + validate + keep a copy of the
original (validate.ingest_file), then the union build (dataset.build_from_validated): exact and
conflicting duplicates, length limit, grouped stratified split, train/eval/quarantine parquet.

The baseline is the obvious pandas program: json.loads every line into a DataFrame, iterrows() with
the same `normalize` rules, a dict for duplicates, sha256 row ids, to_parquet. Both run in their own
subprocess (peak RSS is the child's ru_maxrss) on the same file, and must agree on every count.

The data is deliberately dirty (~1.5 % bad rows of every kind, duplicates, conflicts), so the fast
path's fallbacks are part of the measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "the a of to and in is it that for on with as was at by an be this from or have not are "
    "model answer question python data list value return function error because which when"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Dirty JSONL: mostly good rows; malformed lines, bad labels, empty/missing fields, duplicates."""
    rng = random.Random(seed)
    kinds: dict[str, int] = {}
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(6, 18))) + "?" for _ in range(max(1, rows // 3))]
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            r = rng.random()
            row = {
                "prompt": rng.choice(prompts),
                "completion": " ".join(rng.choices(WORDS, k=rng.randint(8, 40))),
                "label": rng.random() < 0.6,
            }
            if r < 0.001:
                kind, line = "malformed", json.dumps(row)[: rng.randint(5, 30)]
            elif r < 0.0015:
                kind, line = "not_object", json.dumps([row["prompt"], row["completion"]])
            elif r < 0.0035:
                kind, line = "bad_label", json.dumps({**row, "label": rng.choice(["maybe", "2", "thumbs up"])})
            elif r < 0.0060:
                kind, line = "empty", json.dumps({**row, "completion": rng.choice(["", "   ", "\n"])})
            elif r < 0.0080:
                kind, line = "missing", json.dumps({k: v for k, v in row.items() if k != "prompt"})
            elif r < 0.0090:
                kind, line = "null_label", json.dumps({**row, "label": None})
            elif r < 0.0120 and recent:
                kind, line = "duplicate", json.dumps(rng.choice(recent))
            elif r < 0.0125 and recent:
                src = rng.choice(recent)
                kind, line = "conflict", json.dumps({**src, "label": not src["label"]})
            else:
                kind, line = "good", json.dumps(row)
                recent.append(row)
                if len(recent) > 1000:
                    recent.pop(0)
            kinds[kind] = kinds.get(kind, 0) + 1
            f.write(line + "\n")
    return kinds


# ---- the two contenders (each runs in its own subprocess) ------------------------------------------


def run_pipeline(src: Path, work: Path) -> dict:
    from kto_pipeline.data.dataset import build_from_validated
    from kto_pipeline.data.validate import ingest_file

    folder, _ = ingest_file(src, work / "cache")
    return build_from_validated([folder], work / "dataset", eval_fraction=0.1, seed=42)


def run_baseline(src: Path, work: Path) -> dict:
    """The naive program: whole file in memory, pandas, one Python call per row."""
    import pandas as pd

    from kto_pipeline.data.normalize import BadRow, normalize

    records = []
    with open(src, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                records.append({"line": n, "record": json.loads(raw.decode("utf-8")), "error": None})
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                records.append({"line": n, "record": None, "error": f"malformed JSON: {e}"})
    df = pd.DataFrame(records)
    good, bad = [], []
    for _, r in df.iterrows():
        if isinstance(r["error"], str):  # pandas turns the missing ones into NaN
            bad.append({"line": r["line"], "reason": r["error"]})
            continue
        try:
            row = normalize(r["record"])
        except BadRow as e:
            bad.append({"line": r["line"], "reason": str(e)})
            continue
        key = hashlib.sha256(json.dumps([row["messages"] or row["prompt"], row["completion"]]).encode()).hexdigest()
        good.append({**row, "line": r["line"], "row_id": key})
    rows = pd.DataFrame(good)
    labels_per_id = rows.groupby("row_id")["label"].nunique()
    conflicted = rows["row_id"].map(labels_per_id) > 1
    dup = rows.duplicated(["row_id", "label"], keep="first")
    conflict_rows = rows[conflicted & ~dup]
    valid = rows[~conflicted & ~dup].copy()
    valid["split"] = [
        "eval" if int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < 0.1 else "train"
        for p in valid["prompt"]
    ]
    out = work / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    valid[valid.split == "train"].to_parquet(out / "train.parquet")
    valid[valid.split == "eval"].to_parquet(out / "eval.parquet")
    pd.DataFrame(bad).to_parquet(out / "quarantine.parquet")
    return {
        "records_in": len(df),
        "valid": len(valid),
        "quarantined": len(bad) + len(conflict_rows),
        "duplicates_dropped": int(dup.sum()),
    }


def other_formats(src: Path, folder: Path) -> dict[str, Path]:
    """The same feedback as chat-format JSONL, CSV and Parquet (clean rows only)."""
    import pandas as pd

    rows = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(r, dict)
                and isinstance(r.get("prompt"), str)
                and isinstance(r.get("completion"), str)
                and isinstance(r.get("label"), bool)
                and r["completion"].strip()
            ):
                rows.append(r)
    chat = folder / "chat.jsonl"
    with open(chat, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Be helpful."},
                            {"role": "user", "content": r["prompt"]},
                            {"role": "assistant", "content": r["completion"]},
                        ],
                        "label": "yes" if r["label"] else "no",
                    }
                )
                + "\n"
            )
    df = pd.DataFrame(rows)
    df.to_csv(folder / "feedback.csv", index=False)
    df.to_parquet(folder / "feedback.parquet")
    return {"chat JSONL (messages)": chat, "CSV": folder / "feedback.csv", "Parquet": folder / "feedback.parquet"}


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork+exec, so a child would report the parent's peak if that was higher."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(which: str, src: Path, work: Path) -> None:
    fn = {"pipeline": run_pipeline, "baseline": run_baseline}[which]
    import pandas  # noqa: F401

    import kto_pipeline.data.dataset  # noqa: F401  imports are not part of the measurement

    start = time.perf_counter()
    cpu = time.process_time()
    report = fn(src, work)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_mib": peak_rss_mib(),
                **{k: report[k] for k in ("records_in", "valid", "quarantined", "duplicates_dropped")},
            }
        )
    )


def measure(which: str, src: Path, work: Path) -> dict:
    # Flush the dirty pages of earlier steps (the generated file, the last run's outputs) first, so the
    # kernel does not write them back on one of the 2 cores during this measurement.
    os.sync()
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--input", str(src), "--work", str(work)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if out.returncode != 0:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="pipeline runs (the best is reported; baseline runs once)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--formats", action="store_true", help="also time chat JSONL, CSV and Parquet inputs (pipeline only)"
    )
    ap.add_argument("--child", choices=["pipeline", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.input, args.work)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kto_data_bench_") as tmp:
        src = Path(tmp) / "feedback.jsonl"
        t = time.perf_counter()
        kinds = generate(src, args.rows)
        print(
            f"generated {args.rows:,} rows ({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s: "
            f"{kinds}",
            flush=True,
        )
        runs = []
        for i in range(args.repeat):
            runs.append(measure("pipeline", src, Path(tmp) / f"p{i}"))
            print("pipeline", runs[-1], flush=True)
        best = min(runs, key=lambda r: r["wall_s"])
        base = None
        if not args.skip_baseline:
            base = measure("baseline", src, Path(tmp) / "b")
            print("baseline", base, flush=True)
            for k in ("records_in", "valid", "quarantined", "duplicates_dropped"):
                assert best[k] == base[k], f"pipeline and baseline disagree on {k}: {best[k]} vs {base[k]}"
        for r in runs:
            assert r["records_in"] == r["valid"] + r["quarantined"] + r["duplicates_dropped"]
        formats = {}
        if args.formats:
            for name, path in other_formats(src, Path(tmp)).items():
                formats[name] = measure("pipeline", path, Path(tmp) / f"f{len(formats)}")
                print(name, formats[name], flush=True)

    print(
        f"\n{args.rows:,} rows, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs on the machine)\n"
    )
    print("| implementation | wall s | CPU s | rows/s (wall) | peak RSS MiB | valid | quarantined | duplicates |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in [(f"streaming pipeline (best of {len(runs)})", best)] + (
        [("naive pandas row-by-row", base)] if base else []
    ):
        print(
            f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['records_in'] / r['wall_s']:,.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['valid']:,} | {r['quarantined']:,} | {r['duplicates_dropped']:,} |"
        )
    walls = sorted(r["wall_s"] for r in runs)
    print(
        f"\npipeline wall s over {len(runs)} runs: best {walls[0]:.2f}, median {walls[len(walls) // 2]:.2f}, "
        f"worst {walls[-1]:.2f} ({args.rows / walls[-1]:,.0f}-{args.rows / walls[0]:,.0f} rows/s)"
    )
    if base:
        print(f"speed-up: {base['wall_s'] / best['wall_s']:.1f}x wall, {base['cpu_s'] / best['cpu_s']:.1f}x CPU")
    if formats:
        print("\n| input (same data, well-formed rows only) | rows | wall s | CPU s | rows/s (wall) | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for name, r in formats.items():
            print(
                f"| {name} | {r['records_in']:,} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                f"{r['records_in'] / r['wall_s']:,.0f} | {r['peak_rss_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
