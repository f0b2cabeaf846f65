"""The environment is read at run time, never at import time; resources take dg.EnvVar."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from kto_pipeline.defs.release import ReleaseTarget
from kto_pipeline.defs.resources import ArtifactStore

REPO = Path(__file__).resolve().parent.parent

# Imports every kto_pipeline module with os.environ watched: a read whose caller is kto_pipeline code is recorded.
SPY = r"""
import json, os, pkgutil, sys, importlib

reads = []
LIB = ("/os.py", "/_collections_abc.py", "<frozen os>", "<frozen _collections_abc>")  # 3.11 freezes both

class Spy(type(os.environ)):
    def _note(self, key):
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.endswith(LIB):
            f = f.f_back
        if f is not None and "/kto_pipeline/" in f.f_code.co_filename.replace(os.sep, "/"):
            reads.append(f"{key} at {os.path.basename(f.f_code.co_filename)}:{f.f_lineno}")

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

os.environ.__class__ = Spy
import kto_pipeline
names = [m.name for m in pkgutil.walk_packages(kto_pipeline.__path__, "kto_pipeline.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
at_import = list(reads)
from kto_pipeline.definitions import defs
schedule = defs.resolve_schedule_def("retrain_schedule")
print(json.dumps({"modules": len(names), "at_import": at_import, "at_build": reads[len(at_import):],
                  "cron": schedule.cron_schedule}))
"""


def spy(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", SPY], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_kto_pipeline_module_reads_the_environment_when_imported():
    clean = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": os.environ.get("HOME", "/root")}
    got = spy(clean)
    assert got["modules"] > 40
    assert got["at_import"] == []
    # The definitions load with no variable set; building them reads the schedule's cron, and only that.
    assert got["cron"] == "0 3 * * *"
    assert [r.split(" at ")[0] for r in got["at_build"]] == ["KTO_RETRAIN_CRON"]
    assert spy(dict(clean, KTO_RETRAIN_CRON="15 4 * * *"))["cron"] == "15 4 * * *"


def test_resources_take_env_vars(tmp_path, monkeypatch):
    seen = {}

    @dg.asset
    def probe(artifacts: ArtifactStore, release_target: ReleaseTarget) -> None:
        seen.update(root=artifacts.path, endpoint=release_target.endpoint, repo=release_target.repo_id)

    monkeypatch.setenv("KTO_TEST_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("KTO_TEST_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("KTO_TEST_REPO", "me/from-env")
    result = dg.materialize(
        [probe],
        resources={
            "artifacts": ArtifactStore(root=dg.EnvVar("KTO_TEST_ROOT")),
            "release_target": ReleaseTarget(
                endpoint=dg.EnvVar("KTO_TEST_ENDPOINT"), repo_id=dg.EnvVar("KTO_TEST_REPO")
            ),
        },
    )
    assert result.success
    assert seen == {"root": (tmp_path / "store").resolve(), "endpoint": "http://127.0.0.1:9", "repo": "me/from-env"}


def test_a_bad_repo_id_fails_at_resource_setup_naming_the_field():
    import pytest

    for bad in ("me/../x", "a/b/c", "-bad-/name", "me/" + "x" * 97):
        with pytest.raises(Exception) as info:
            ReleaseTarget(repo_id=bad)
        assert "release_target.repo_id" in str(info.value) and repr(bad) in str(info.value)
    ReleaseTarget(repo_id="me/good-name_1.0")
