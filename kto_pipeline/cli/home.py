"""The Dagster instance and artifact folder that the CLI and `dagster dev` share."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "dagster.yaml"
# Dagster of the interpreter running `kto`, not whatever `dagster` is first on PATH (an unactivated venv, pipx).
DAGSTER = [sys.executable, "-m", "dagster"]


def dagster_home() -> Path:
    """$DAGSTER_HOME, else ./.dagster, created with the shipped dagster.yaml (sqlite, gpu pool of 1)."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(SHIPPED_CONFIG, home / "dagster.yaml")
    return home


def child_env(artifact_root: str | None = None, hf_token: str | None = None) -> dict[str, str]:
    """Environment for dagster subprocesses. The token travels only here, never in run config."""
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home()))
    if artifact_root:
        env["KTO_ARTIFACT_ROOT"] = str(Path(artifact_root).resolve())
    env.setdefault("KTO_ARTIFACT_ROOT", str((Path.cwd() / "artifacts").resolve()))
    if hf_token:
        env["HF_TOKEN"] = hf_token
    return env
