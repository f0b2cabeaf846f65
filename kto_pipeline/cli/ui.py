"""`kto ui`: the Dagster UI on the same instance and artifacts as the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from kto_pipeline.cli.home import DAGSTER, child_env

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 30  # dagster dev's own shutdown of the webserver, daemon and code servers


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on this project's instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=run)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def run(args) -> int:
    workspace = Path.cwd() / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "kto_pipeline.definitions"]
    cmd = [*DAGSTER, "dev", *target, "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={child_env()['DAGSTER_HOME']} {' '.join(cmd)}", flush=True)
    print(f"Dagster UI: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    # dagster dev, its webserver, daemon and code servers in a process group of their own, so that a signal to
    # `kto ui` (a service manager's SIGTERM, a closed terminal's SIGHUP, Ctrl-C) reaches every one of them: with
    # a plain subprocess a SIGTERM ended `kto ui` alone and left the rest running.
    proc = subprocess.Popen(cmd, env=child_env(), start_new_session=True)
    received: list[tuple[int, float]] = []

    def forward(signum, _frame) -> None:
        received.append((signum, time.time()))
        stop_group(proc.pid, signum)

    saved = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:  # dagster dev may take its time, or hang (a full stdout pipe): GRACE_S, then SIGKILL
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and time.time() - received[0][1] > GRACE_S:
                    stop_group(proc.pid, signal.SIGKILL)
        deadline = time.time() + GRACE_S
        while _group_alive(proc.pid) and time.time() < deadline:  # children still shutting down
            time.sleep(0.2)
        if _group_alive(proc.pid):
            stop_group(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return 128 + received[0][0] if received else code
