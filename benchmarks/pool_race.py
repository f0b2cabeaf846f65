#!/usr/bin/env python
"""Why lora_adapter holds a file lock besides the Dagster pool: the pool's slot claim races on SQLite.

Each trial: a fresh DAGSTER_HOME with the shipped dagster.yaml (pool default_limit 1, SQLite storage), or with
--storage postgres dagster_postgres.yaml on a new database of a throwaway PostgreSQL cluster, the "gpu"
pool initialized, then two processes released at once by a barrier each call claim_concurrency_slot, and then
take artifacts.exclusive (the lock lora_adapter takes) for 50 ms, recording when they held it.

    python benchmarks/pool_race.py --trials 20 [--storage postgres]
"""

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from kto_pipeline_tests.postgres import InstanceHomes  # noqa: E402 - the throwaway PostgreSQL cluster


def contender(home: str, env: dict, run_id: str, lock: str, barrier, results) -> None:
    import dagster as dg

    from kto_pipeline.artifacts import exclusive

    os.environ.update(env)
    instance = dg.DagsterInstance.from_config(home)
    barrier.wait()
    claimed = instance.event_log_storage.claim_concurrency_slot("gpu", run_id, "lora_adapter").is_claimed
    with exclusive(Path(lock), run_id):
        start = time.monotonic()
        time.sleep(0.05)
        results.put((claimed, start, time.monotonic()))


def main() -> int:
    import dagster as dg

    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    args = p.parse_args()
    double, overlaps = 0, 0
    with InstanceHomes(args.storage) as homes:
        for _ in range(args.trials):
            home = tempfile.mkdtemp()
            env = homes.new(Path(home))
            os.environ.update(env)
            with dg.DagsterInstance.from_config(home) as instance:
                instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
            barrier, results = mp.Barrier(2), mp.Queue()
            procs = [
                mp.Process(target=contender, args=(home, env, f"run{i}", f"{home}/gpu.lock", barrier, results))
                for i in range(2)
            ]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join()
            (c1, s1, e1), (c2, s2, e2) = sorted(results.get() for _ in procs)
            double += c1 and c2
            overlaps += s1 < e2 and s2 < e1
            shutil.rmtree(home)
    print(
        f"{args.storage}, {args.trials} trials: both processes claimed the pool's one slot in {double}; "
        f"both held the file lock at once in {overlaps}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
