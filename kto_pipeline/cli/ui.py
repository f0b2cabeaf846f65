"""`kto ui`: the Dagster UI on the same instance and artifacts as the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kto_pipeline.cli.home import DAGSTER, child_env


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on this project's instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=run)


def run(args) -> int:
    workspace = Path.cwd() / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "kto_pipeline.definitions"]
    cmd = [*DAGSTER, "dev", *target, "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={child_env()['DAGSTER_HOME']} {' '.join(cmd)}")
    return subprocess.call(cmd, env=child_env())
