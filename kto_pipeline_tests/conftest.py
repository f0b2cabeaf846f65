"""Shared fixtures: the tiny model (built once per session) and throwaway Dagster projects."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

# huggingface_hub and datasets read HF_HUB_OFFLINE once, at import: import them now, so that a test that sets it
# for itself does not turn the whole session offline (the fake-Hub tests need it online).
import datasets.config  # noqa: E402,F401
import huggingface_hub.constants  # noqa: E402,F401
import pytest

REPO = Path(__file__).resolve().parent.parent
RAW_SAMPLES = REPO / "data" / "raw"
SHIPPED_DAGSTER_YAML = REPO / "kto_pipeline" / "dagster.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from kto_pipeline.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model_dir) -> Path:
    """An artifact cache holding the tiny model, as train() expects it (one per test module)."""
    root = tmp_path_factory.mktemp("cache")
    shutil.copytree(tiny_model_dir, root / "tiny")
    return root


@pytest.fixture(scope="module")
def kto_data(tmp_path_factory) -> Path:
    """The sample feedback through the real data layer: train.parquet + eval.parquet (one per test module)."""
    from kto_pipeline.data.dataset import build_kto_dataset

    out = tmp_path_factory.mktemp("kto_dataset")
    build_kto_dataset(sorted(RAW_SAMPLES.glob("*.jsonl")), out, eval_fraction=0.2)
    return out


@dataclass
class Project:
    """A Dagster home + artifact root in a temp folder, as `kto` would create them."""

    root: Path
    home: Path
    artifacts: Path

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ, DAGSTER_HOME=str(self.home), KTO_ARTIFACT_ROOT=str(self.artifacts), PYTHONUNBUFFERED="1"
        )

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.home))

    def materialize_cli(self, select: str, config: dict | None = None, **popen) -> subprocess.Popen:
        """`dagster asset materialize` as a user runs it, in a subprocess."""
        cmd = [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kto_pipeline.definitions",
            "--select",
            select,
        ]
        if config:
            cmd += ["--config-json", json.dumps(config)]
        return subprocess.Popen(
            cmd, cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
        )

    def latest(self, asset: str) -> dict:
        import dagster as dg

        with self.instance() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            if event is None:
                return {}
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model_dir) -> Project:
    home, artifacts = tmp_path / "dagster_home", tmp_path / "artifacts"
    home.mkdir()
    shutil.copyfile(SHIPPED_DAGSTER_YAML, home / "dagster.yaml")
    # Reuse the session's tiny model: every project would otherwise build the same files again.
    (artifacts / "cache").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, artifacts / "cache" / "tiny")
    shutil.copytree(RAW_SAMPLES, tmp_path / "data" / "raw")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("KTO_ARTIFACT_ROOT", str(artifacts))
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path, home, artifacts)


def run_ok(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


PYTHON = sys.executable
KTO = [sys.executable, "-c", "import sys; from kto_pipeline.cli import main; sys.exit(main())"]  # the `kto` script
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-B]|[=>78])")


class Terminal:
    """A child process on a pseudo-terminal of 120 x 40; read() collects output until a marker shows up.

    term: the TERM the child sees; "dumb" (the default) keeps rich from drawing live displays."""

    def __init__(self, argv: list[str], term: str = "dumb"):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": term},
        )
        os.close(slave)
        self.buf = b""

    def _read(self) -> bool:
        """Whatever the child wrote within 0.2 s; False once it has closed the terminal."""
        if select.select([self.master], [], [], 0.2)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child has closed the terminal
                return False
            self.buf += data
            return bool(data)
        return True

    def read_until(self, marker: bytes, timeout: float = 120) -> bytes:
        deadline = time.time() + timeout
        while marker not in self.buf:
            if not self._read() or time.time() > deadline:
                raise AssertionError(f"no {marker!r} in terminal output:\n{self.buf.decode(errors='replace')[-3000:]}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_to_end(self, timeout: float = 600) -> tuple[int, str]:
        """(exit code, everything it printed as a person reads it: escape codes removed, \\r\\n as \\n)."""
        deadline = time.time() + timeout
        while self._read():
            assert time.time() < deadline, self.buf.decode(errors="replace")[-3000:]
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        self.raw = self.buf  # escape codes included
        return code, ANSI.sub("", self.buf.decode(errors="replace")).replace("\r\n", "\n")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (kto_pipeline_tests/postgres.py), stopped and removed after."""
    from kto_pipeline_tests.postgres import Cluster, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: apt-get install postgresql"
        )
    with Cluster.start() as cluster:
        yield cluster
