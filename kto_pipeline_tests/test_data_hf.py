"""A Hugging Face dataset by Hub id (kto_pipeline.data.hf): the real `datasets` / `huggingface_hub` clients
against hub_server.FakeHub online, then offline (HF_HUB_OFFLINE=1, hub stopped) from the cache that filled.

huggingface_hub.constants and datasets.config read HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE once, at import:
every load runs in a fresh interpreter with the environment the test set, as a user's run would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kto_pipeline.data import build_kto_dataset, validate_file
from kto_pipeline_tests.hub_server import FakeHub

TOKEN = "hf_testTOKEN_0d9e8f7a6b5c4d3e2f1a"
REPO = "me/feedback"
GOOD = [
    {"prompt": f"question {i}?", "completion": f"answer {i}.", "label": ["yes", "no", "👍", "👎"][i % 4]}
    for i in range(8)
]
BAD = [
    {"prompt": "question 8?", "completion": "", "label": "yes"},  # empty field
    {"prompt": "question 9?", "completion": "answer 9.", "label": "maybe"},
]  # bad label
ROWS = GOOD[:4] + BAD[:1] + GOOD[4:] + BAD[1:]

# Exit 3 with the one-line DataFileError on stdout; anything else escapes as a traceback.
LOAD = """
import json, sys
from pathlib import Path
from kto_pipeline.data import DataFileError
from kto_pipeline.data.hf import snapshot
try:
    path, label = snapshot(sys.argv[1], Path(sys.argv[2]), data_file=sys.argv[3])
except DataFileError as e:
    print(e)
    sys.exit(3)
print(json.dumps([str(path), label]))
"""


@pytest.fixture
def hf_env(tmp_path, monkeypatch) -> Path:
    """A private HF home in tmp_path, online, pointed at nothing yet."""
    home = tmp_path / "hf"
    for var, sub in (("HF_HOME", ""), ("HF_HUB_CACHE", "hub"), ("HF_DATASETS_CACHE", "datasets")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return home


def load(name: str, out: Path, data_file: str = "feedback.jsonl") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD, name, str(out), data_file],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def loaded(proc: subprocess.CompletedProcess) -> tuple[Path, str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    path, label = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(path), label


def test_hub_dataset_by_id_online_then_offline_from_the_cache(hf_env, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    hub = FakeHub(token=TOKEN).start()
    try:
        api = HfApi(endpoint=hub.endpoint)  # token: HF_TOKEN from the environment
        api.create_repo(REPO, repo_type="dataset", private=True)
        api.create_repo(REPO)  # a model with the same id is another repo
        src = tmp_path / "feedback.jsonl"
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
        api.upload_file(path_or_fileobj=str(src), path_in_repo="feedback.jsonl", repo_id=REPO, repo_type="dataset")
        assert api.list_repo_files(REPO, repo_type="dataset") == [".gitattributes", "feedback.jsonl"]
        assert api.list_repo_files(REPO) == [".gitattributes"]
        assert hub.file_bytes(f"datasets/{REPO}", "feedback.jsonl") == src.read_bytes()

        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        before = len(hub.requests)
        path, label = loaded(load(REPO, tmp_path / "online"))
        calls = hub.requests[before:]
    finally:
        hub.stop()

    assert label == f"hf://{REPO}/feedback.jsonl"
    assert pd.read_parquet(path).to_dict("records") == ROWS
    assert [c for c in calls if c["kind"] == "unknown"] == []  # every call load_dataset made has a route
    (get,) = [c for c in calls if c["method"] == "GET" and c["path"].endswith("/feedback.jsonl")]
    assert get["path"].startswith(f"/datasets/{REPO}/resolve/") and get["status"] == 200
    assert get["headers"]["authorization"] == f"Bearer {TOKEN}"  # private: the token went along

    report = validate_file(path, tmp_path / "validated", source=label)
    assert (report["records_in"], report["valid"], report["quarantined"]) == (10, 8, 2)
    assert report["reasons"] == {"bad label": 1, "empty field": 1}
    assert (report["n_desirable"], report["n_undesirable"]) == (4, 4)
    quarantine = pd.read_parquet(tmp_path / "validated" / "quarantine.parquet")
    assert set(quarantine.source) == {label}
    data = build_kto_dataset([path], tmp_path / "dataset", eval_fraction=0.25)
    assert (data["valid"], data["quarantined"], data["train_rows"] + data["eval_rows"]) == (8, 2, 8)

    # Hub gone, offline: the same id comes back from the cache the online load filled.
    assert (hf_env / "hub" / "datasets--me--feedback").is_dir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path2, label2 = loaded(load(REPO, tmp_path / "offline"))
    assert label2 == label and path2 != path
    assert pd.read_parquet(path2).to_dict("records") == ROWS

    # A file of that dataset that was never downloaded: a clear failure, not a guess.
    other = load(REPO, tmp_path / "other", data_file="other.jsonl")
    assert other.returncode == 3, other.stdout + other.stderr[-4000:]
    assert f"hf://{REPO}/other.jsonl" in other.stdout and "offline mode is on" in other.stdout


def test_offline_uncached_hub_dataset_fails_with_one_clear_line(hf_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = load("nobody/nothing", tmp_path / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr[-4000:]
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith("Hugging Face dataset hf://nobody/nothing/feedback.jsonl: could not be loaded (")
    assert "offline mode is on: only cached datasets and local folders work" in line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
