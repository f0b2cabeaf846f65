#!/usr/bin/env python
"""Many-trial version of kto_pipeline_tests/test_artifacts.py and test_concurrency.py: N builds of one version at once.

Two scenarios, each against a code tree (--code: this checkout, or an export of the commit before the store):

  store  N processes released together by a barrier build one version of an artifact (5 files, 20 ms apart):
         the old tree through `artifacts.building` behind an `is_complete` check (what every asset did), the new
         one through `Store.get_or_build`.
  cli    a fresh DAGSTER_HOME (shipped dagster.yaml, SQLite), warmed by materializing raw_preferences, then N
         `dagster asset materialize --select kto_dataset` started at once.

Per trial it counts failed builds/runs, builds (runs that did not reuse a finished folder), and corrupt results
(the final folder missing a file or `.complete`). Builds: processes that started building (a failed one too).

    git archive <commit-before> kto_pipeline | tar -x -C /tmp/before
    python benchmarks/concurrency.py store --code /tmp/before --trials 20 --runs 10
    python benchmarks/concurrency.py store --trials 20 --runs 10
    python benchmarks/concurrency.py cli --code /tmp/before --trials 3 --runs 6
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = [f"part{i}.json" for i in range(5)]


def store_contender(code: str, root: str, barrier, results) -> None:
    sys.path.insert(0, code)
    import kto_pipeline.artifacts as artifacts

    started = []

    def build(tmp: Path) -> None:
        started.append(True)
        for name in FILES:
            (tmp / name).write_text(json.dumps({"pid": os.getpid()}))
            time.sleep(0.02)

    barrier.wait()
    try:
        if hasattr(artifacts, "Store"):
            built = artifacts.Store(root).get_or_build("kto_dataset", "v1", build).built
        else:  # the pattern every asset hand-rolled before the store
            out = Path(root) / "kto_dataset" / "v1"
            built = not artifacts.is_complete(out)
            if built:
                with artifacts.building(out) as tmp:
                    build(tmp)
        results.put(("ok", built, ""))
    except Exception as e:  # noqa: BLE001 - counted, with its type
        results.put(("failed", bool(started), type(e).__name__))


def store_trial(code: str, runs: int) -> dict:
    root = tempfile.mkdtemp(prefix="store_race_")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=store_contender, args=(code, root, barrier, results)) for _ in range(runs)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    final = Path(root) / "kto_dataset" / "v1"
    names = sorted(p.name for p in final.iterdir()) if final.is_dir() else []
    corrupt = int(names != sorted(FILES + [".complete"]))
    shutil.rmtree(root, ignore_errors=True)
    return {"failed": sum(s != "ok" for s, _, _ in got), "builds": sum(b for _, b, _ in got), "corrupt": corrupt,
            "errors": [e for s, _, e in got if s != "ok"]}


def cli_trial(code: str, runs: int, rows: int = 0) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cli_race_"))
    home, artifacts = tmp / "home", tmp / "artifacts"
    home.mkdir()
    shutil.copyfile(REPO / "kto_pipeline" / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(REPO / "data" / "raw", tmp / "data" / "raw")
    if rows:  # a bigger dataset: a build long enough for the runs to overlap (CLI start-up jitter is ~seconds)
        with open(tmp / "data" / "raw" / "synthetic.jsonl", "w") as f:
            for i in range(rows):
                f.write(json.dumps({"prompt": f"question {i}", "completion": f"answer {i} " * 20,
                                    "label": i % 3 != 0}) + "\n")
    env = dict(os.environ, DAGSTER_HOME=str(home), KTO_ARTIFACT_ROOT=str(artifacts), PYTHONPATH=code,
               PYTHONDONTWRITEBYTECODE="1")

    def start(select: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                                 "kto_pipeline.definitions", "--select", select], cwd=tmp, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    warm = start("raw_preferences")
    out, _ = warm.communicate(timeout=600)
    if warm.returncode != 0:
        raise SystemExit(f"warming failed:\n{out[-3000:]}")
    procs = [start("kto_dataset") for _ in range(runs)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    errors = []
    for p, o in zip(procs, outs):
        if p.returncode != 0:
            causes = [line.strip() for line in o.splitlines()
                      if "Error: " in line and "DagsterExecutionStepExecutionError" not in line]
            errors.append(causes[0][:200] if causes else "exit != 0")
    folders = [p for p in (artifacts / "kto_dataset").iterdir() if not p.name.startswith(".")
               and not p.name.endswith((".partial", ".lock"))]
    corrupt = sum(not all((f / n).is_file() for n in (".complete", "report.json", "train.parquet")) for f in folders)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"failed": len(errors), "builds": sum("already built" not in o for o in outs), "corrupt": corrupt,
            "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["store", "cli"])
    p.add_argument("--code", default=str(REPO), help="the tree whose kto_pipeline runs")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rows", type=int, default=0, help="cli: add a synthetic raw file of this many rows")
    args = p.parse_args()
    rows = []
    for i in range(args.trials):
        code = str(Path(args.code).resolve())
        r = store_trial(code, args.runs) if args.scenario == "store" else cli_trial(code, args.runs, args.rows)
        rows.append(r)
        print(f"trial {i + 1}: {r}", flush=True)
    total = args.trials * args.runs
    errors = Counter(e.split(":")[0] for r in rows for e in r["errors"])
    extra_builds = sum(r["builds"] - 1 for r in rows)
    print(f"| {args.scenario}{f' ({args.rows} rows)' if args.rows else ''} | {args.code} | {args.trials} x {args.runs} | "
          f"{sum(r['failed'] for r in rows)} of {total} | {sum(r['corrupt'] for r in rows)} | "
          f"{extra_builds} | {dict(errors) or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
