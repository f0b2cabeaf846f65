"""The artifact store under real concurrency: N processes building one version at once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kto_pipeline.artifacts import COMPLETE, Store, build_once, is_complete, version_of


def slow_build(root: str, marker: str, q) -> None:
    """A build that takes a while and writes several files, recording that it ran."""

    def build(tmp: Path) -> None:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        for i in range(5):
            (tmp / f"part{i}.json").write_text(json.dumps({"i": i, "pid": os.getpid()}))
            time.sleep(0.02)

    try:
        art = Store(root).get_or_build("kto_dataset", "v1", build)
        parts = sorted(p.name for p in art.path.iterdir())
        q.put(("ok", art.built, parts))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        q.put(("error", repr(e), []))


def test_concurrent_builds_of_one_version_build_once_and_all_succeed(tmp_path):
    n = 8
    marker = tmp_path / "builds.txt"
    q = mp.get_context("spawn").Queue()
    procs = [
        mp.get_context("spawn").Process(target=slow_build, args=(str(tmp_path / "root"), str(marker), q))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r for r in results if r[0] != "ok"] == []
    assert sum(r[1] for r in results) == 1, "exactly one process built, the others reused its folder"
    assert len(marker.read_text().split()) == 1
    expected = sorted([COMPLETE] + [f"part{i}.json" for i in range(5)])
    assert all(r[2] == expected for r in results), results
    leftovers = [p.name for p in (tmp_path / "root" / "kto_dataset").iterdir() if p.name != "v1"]
    assert all(name.endswith(".lock") for name in leftovers), leftovers  # no scratch folder left behind


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path):
    store = Store(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.get_or_build("merged_model", "v1", broken)
    assert not store.path("merged_model", "v1").exists()
    assert sorted(p.name for p in (tmp_path / "merged_model").iterdir()) == [".v1.lock"]
    art = store.get_or_build("merged_model", "v1", lambda tmp: (tmp / "ok.txt").write_text("ok"))
    assert art.built and (art.path / "ok.txt").read_text() == "ok" and is_complete(art.path)
    again = store.get_or_build("merged_model", "v1", broken)  # complete: never built again
    assert not again.built


def test_resumable_build_continues_where_the_failed_one_stopped(tmp_path):
    store = Store(tmp_path)
    calls = []

    def step(tmp: Path) -> None:
        calls.append(sorted(p.name for p in tmp.iterdir()))
        if not (tmp / "checkpoint").exists():
            (tmp / "checkpoint").write_text("step 5")
            raise RuntimeError("killed")
        (tmp / "adapter.safetensors").write_text("w")

    with pytest.raises(RuntimeError):
        store.get_or_build("lora_adapter", "v1", step, resumable=True)
    art = store.get_or_build("lora_adapter", "v1", step, resumable=True)
    assert calls == [[], ["checkpoint"]] and art.built
    assert (art.path / "adapter.safetensors").exists() and not (tmp_path / "lora_adapter" / ".resume" / "v1").exists()


KILLED = """import sys, time
from pathlib import Path
from kto_pipeline.artifacts import build_once
def build(tmp):
    (tmp / "a").write_text("a")
    print("building", flush=True)
    time.sleep(60)
build_once(Path(sys.argv[1]), build)
"""


def test_sigkill_mid_build_then_rerun(tmp_path):
    final = tmp_path / "gguf_quantizations" / "v1"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not final.exists()  # nothing partial under the final name
    assert build_once(final, lambda tmp: (tmp / "b").write_text("b"), holder="re-run")  # lock freed by the kill
    assert sorted(p.name for p in final.iterdir()) == [COMPLETE, "b"]


def test_a_stale_incomplete_folder_is_replaced_not_trusted(tmp_path):
    final = tmp_path / "x" / "v1"
    final.mkdir(parents=True)
    (final / "garbage").write_text("from an older layout")
    assert build_once(final, lambda tmp: (tmp / "good").write_text("g"))
    assert sorted(p.name for p in final.iterdir()) == [COMPLETE, "good"]


def test_version_is_one_recipe_over_named_typed_inputs():
    a = version_of(kto_dataset="abc", training="f00")
    assert a == version_of(training="f00", kto_dataset="abc") and len(a) == 16
    assert a != version_of(kto_dataset="abd", training="f00")
    assert version_of(x=1) != version_of(x="1")
    with pytest.raises(TypeError, match="inputs.path"):
        version_of(path=Path("/tmp"))
    with pytest.raises(ValueError, match="version '../x'"):
        Store("/tmp").path("kto_dataset", "../x")
