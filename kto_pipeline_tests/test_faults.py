"""Faults with real processes, a real filesystem and a real Hub client (the many-trial version:
benchmarks/faults.py, results in benchmarks/FAULTS.md).

- disk full: the artifact root is a small tmpfs; a build that fills it fails naming the folder, the space left
  and the asset, marks nothing complete and leaves no scratch folder;
- a flipped byte on the Hub's storage is caught before anyone downloads it: by the release itself (it is not
  tagged) and by `kto verify`;
- SIGKILL of a training step: nothing is reported complete, and the re-run resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kto_pipeline.artifacts import DiskFullError, Store, is_complete
from kto_pipeline_tests.conftest import Project, run_ok


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (a real filesystem that really fills up); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_names_the_path_and_asset_and_marks_nothing_complete(small_disk):
    store = Store(small_disk)

    def build(tmp: Path) -> None:
        (tmp / "header.json").write_text("{}")
        with open(tmp / "weights.bin", "wb") as f:
            for _ in range(64):  # 4 MB into a 2 MB disk
                f.write(os.urandom(1 << 16))

    with pytest.raises(DiskFullError) as info:
        store.get_or_build("merged_model", "v1", build)
    message = str(info.value)
    assert message.startswith(f"{small_disk / 'merged_model' / 'v1'}: disk full (")
    assert "MB free) while writing merged_model" in message
    assert info.value.__cause__ is not None and info.value.__cause__.errno == 28  # the real ENOSPC underneath
    assert not (small_disk / "merged_model" / "v1").exists()
    leftovers = [p.name for p in (small_disk / "merged_model").iterdir() if not p.name.endswith((".lock", ".holder"))]
    assert leftovers == []  # the scratch folder is gone: the space is free again
    assert shutil.disk_usage(small_disk).free > 1.5 * 2**20
    # The next build that fits succeeds on the same disk.
    assert store.get_or_build("merged_model", "v1", lambda tmp: (tmp / "w.bin").write_bytes(b"x" * 1000)).built


def test_scratch_left_by_a_killed_build_is_removed_by_the_next_build(tmp_path):
    """SIGKILL leaves the killed build's scratch folder behind; the next holder of the version's lock removes it."""
    import sys

    store = Store(tmp_path)
    code = (
        "import sys, time; from pathlib import Path; from kto_pipeline.artifacts import Store\n"
        "def build(tmp):\n    (tmp / 'half.bin').write_bytes(b'x' * 1000); print('writing', flush=True); "
        "time.sleep(60)\n"
        f"Store({str(tmp_path)!r}).get_or_build('merged_model', 'v1', build)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)),
    )
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    left = [p.name for p in (tmp_path / "merged_model").iterdir() if ".tmp-" in p.name]
    assert len(left) == 1 and not store.is_complete("merged_model", "v1")
    assert store.get_or_build("merged_model", "v1", lambda tmp: (tmp / "w.bin").write_bytes(b"y")).built
    assert [p.name for p in (tmp_path / "merged_model").iterdir() if ".tmp-" in p.name] == []


def test_disk_full_in_a_child_process_is_named_too(small_disk):
    """Training and llama.cpp write from child processes, whose ENOSPC reaches the asset only as an exit code."""
    import sys

    def build(tmp: Path) -> None:
        code = f"open({str(tmp / 'checkpoint.bin')!r}, 'wb').write(bytes(4 << 20))"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True)
        if r.returncode:
            raise RuntimeError(f"training process failed with code {r.returncode}")

    with pytest.raises(DiskFullError, match=r"lora_adapter/v2: disk full \(0\.\d MB free\) while writing lora_adapter"):
        Store(small_disk).get_or_build("lora_adapter", "v2", build, resumable=True)
    assert not (small_disk / "lora_adapter" / "v2").exists()
    assert (small_disk / "lora_adapter" / ".resume" / "v2").is_dir()  # kept: the next attempt resumes from it


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.mark.slow
def test_a_disk_full_dataset_build_fails_the_dagster_run_with_the_message(project, tmp_path):
    """Real Dagster: raw_preferences fits, then the disk is filled to 64 KB free and kto_dataset runs out."""
    root = tmp_path / "disk"
    mount_tmpfs(root, "16m")
    try:
        project = Project(project.root, project.home, root)  # the same instance, artifacts on the small disk
        with open(project.root / "data" / "raw" / "big.jsonl", "w") as f:
            for i in range(20000):
                f.write(
                    json.dumps({"prompt": f"q {i} {uuid.uuid4()}", "completion": f"a {i} " * 10, "label": i % 3 != 0})
                    + "\n"
                )
        run_ok(project.materialize_cli("raw_preferences"))
        free = shutil.disk_usage(root).free
        (root / "filler.bin").write_bytes(b"\0" * (free - 64 * 1024))
        p = project.materialize_cli("kto_dataset")
        out, _ = p.communicate(timeout=300)
        assert p.returncode != 0
        assert f"{root / 'kto_dataset'}/" in out and "MB free) while writing kto_dataset" in out, out[-3000:]
        folders = list((root / "kto_dataset").iterdir())
        assert not [f for f in folders if is_complete(f)]
        assert not [f for f in folders if ".tmp-" in f.name]  # scratch removed
    finally:
        subprocess.run(["umount", str(root)], check=False)


# ------------------------------------------------------------------------------------------- a flipped byte on the Hub
from kto_pipeline_tests.test_release import CARD, REPO, TOKEN, gguf_file, hub  # noqa: E402,F401 - fixtures


def test_a_byte_flipped_in_the_hubs_storage_fails_the_release_before_it_is_tagged(hub, tiny_model_dir, gguf_file):
    from kto_pipeline.release import HubTarget, ReleaseError, release_model

    hub.corrupt_on_commit("model-Q4_K_M.gguf")  # the stored copy differs from what was uploaded, by one byte
    with pytest.raises(ReleaseError) as info:
        release_model(
            tiny_model_dir,
            REPO,
            target=HubTarget(endpoint=hub.endpoint, backoff_s=0.01),
            card_info=CARD,
            gguf_files=[gguf_file],
        )
    text = str(info.value)
    assert "model-Q4_K_M.gguf: the Hub serves sha256" in text and "not tagged" in text
    assert "model.safetensors" not in text  # the intact files are not named
    assert hub.repos[REPO].tags == {}  # no release tag points at the bad commit


@pytest.mark.parametrize("path", ["model.safetensors", "config.json"])  # an LFS file and an inline one
def test_kto_verify_names_a_file_flipped_after_the_release(hub, tiny_model_dir, gguf_file, capsys, path):
    from kto_pipeline.cli import main
    from kto_pipeline.release import HubTarget, release_model

    result = release_model(
        tiny_model_dir,
        REPO,
        target=HubTarget(endpoint=hub.endpoint, backoff_s=0.01),
        card_info=CARD,
        gguf_files=[gguf_file],
    )
    argv = ["verify", REPO, "--revision", result.tag, "--endpoint", hub.endpoint]
    assert main(argv) == 0
    assert "every file matches" in capsys.readouterr().out
    hub.flip_byte(REPO, path, result.tag)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "CORRUPT" in err and f"  {path}: the Hub serves" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("  ")]) == 1  # only that file
    assert TOKEN not in err


# ------------------------------------------------------------------------------------------- SIGKILL
def _faults():
    import importlib.util

    spec = importlib.util.spec_from_file_location("faults", Path(__file__).parent.parent / "benchmarks" / "faults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_sigkill_during_training_reports_nothing_and_the_rerun_resumes_from_the_checkpoint(project):
    faults = _faults()
    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    p = project.materialize_cli("lora_adapter", start_new_session=True)
    step, ckpt, deadline = None, [], time.time() + 600
    while not ckpt and p.poll() is None and time.time() < deadline:  # the first complete checkpoint (step 4)
        step = step or faults.step_process(p.pid)
        ckpt = faults.checkpoints(project.artifacts)
        time.sleep(0.05)
    assert ckpt and step, "training finished or never checkpointed before the kill"
    for pid in [step] + faults.descendants(step, faults.children()):  # the step and the training process
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ckpt = faults.checkpoints(project.artifacts)  # what the killed run left
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    killed_run = faults.run_id_of(out)
    with project.instance() as instance:
        assert faults.materialized_in(instance, killed_run, "lora_adapter") == []
    assert faults.complete_folders(project.artifacts, "lora_adapter") == []  # nothing published under a final name
    out = run_ok(project.materialize_cli("lora_adapter"), timeout=600)
    folder = Path(project.latest("lora_adapter")["path"])
    assert faults.whole(folder) == []
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from"] and int(metrics["resumed_from"].rsplit("-", 1)[1]) == max(ckpt) > 0
    assert metrics["steps"] == 24  # it went on to the end, not from 0
