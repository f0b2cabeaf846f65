"""raw_preferences / kto_dataset / label_balance in a real Dagster instance (no training)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import dagster as dg
import pandas as pd

from kto_pipeline.definitions import defs

DATA = [dg.AssetKey("raw_preferences"), dg.AssetKey("kto_dataset")]


def materialize(instance, ops: dict | None = None):
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=DATA, raise_on_error=False, run_config={"ops": ops or {}}
    )


def failure_message(result) -> str:
    return "\n".join(
        str(e.event_specific_data.error.message) for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    )


def check_result(instance) -> tuple[bool, dict, str | None]:
    rec = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("kto_dataset"), "label_balance"), limit=1
    )[0]
    ev = rec.evaluation
    return ev.passed, {k: v.value for k, v in ev.metadata.items()}, ev.description


def test_raw_dir_of_mixed_formats_with_quarantine_metadata(project):
    raw = project.root / "data" / "raw"
    (raw / "more").mkdir()
    (raw / "more" / "extra.csv").write_text('prompt,completion,label\n"multi\nline",fine,👍\nq2,,no\nq3,ok,maybe\n')
    (raw / "README.md").write_text("not data")
    with project.instance() as instance:
        assert materialize(instance).success
        raw_meta, data = project.latest("raw_preferences"), project.latest("kto_dataset")
    assert raw_meta["files"] == 3 and raw_meta["records_in"] == 69
    assert (data["records_in"], data["valid"], data["quarantined"]) == (69, 67, 2)
    assert data["records_in"] == data["valid"] + data["quarantined"] + data["duplicates_dropped"]
    assert data["quarantine_reasons"] == {"bad label": 1, "empty field": 1}
    assert "bad label" in data["quarantine_sample"] and "extra.csv" in data["quarantine_sample"]
    assert data["desirable_weight"] >= 1 and data["undesirable_weight"] >= 1 and 0 < data["desirable_share"] < 1
    out = project.artifacts / "kto_dataset"
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    train = pd.read_parquet(folder / "train.parquet")
    assert "multi\nline" in set(train.prompt) | set(pd.read_parquet(folder / "eval.parquet").prompt)
    assert len(data["data_version"]) == 16


def test_union_keeps_ingested_files_that_left_the_folder(project):
    raw = project.root / "data" / "raw"
    drop = raw / "drop.jsonl"
    drop.write_text(
        "".join(json.dumps({"prompt": f"drop {i}", "completion": "x", "label": i % 2 == 0}) + "\n" for i in range(10))
    )
    with project.instance() as instance:
        instance.add_dynamic_partitions("raw_files", ["drop.jsonl"])
        assert (
            defs.resolve_job_def("ingest_raw_file")
            .execute_in_process(
                instance=instance,
                partition_key="drop.jsonl",
                run_config={"ops": {"validate_raw_file": {"config": {"raw_dir": str(raw)}}}},
            )
            .success
        )
        drop.unlink()  # gone from disk: its validated rows stay in the union
        assert materialize(instance).success
        assert project.latest("kto_dataset")["valid"] == 76
        instance.delete_dynamic_partition("raw_files", "drop.jsonl")  # the way to drop a file for good
        assert materialize(instance).success
        assert project.latest("kto_dataset")["valid"] == 66


def test_local_file_and_hf_dataset_sources(project, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(project.root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = project.root / "my_hf_dataset"
    ds.mkdir()
    (ds / "feedback.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                    "label": "yes" if i % 2 else "no",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    with project.instance() as instance:
        cfg = {"raw_preferences": {"config": {"dataset_name": str(ds), "dataset_file": "feedback.jsonl"}}}
        assert materialize(instance, cfg).success
        assert project.latest("kto_dataset")["valid"] == 12
        assert f"hf://{ds}/feedback.jsonl" in project.latest("kto_dataset")["sources"]

        one = shutil.copy(project.root / "data" / "raw" / "sample_preferences.jsonl", project.root / "one.jsonl")
        assert materialize(instance, {"raw_preferences": {"config": {"local_file": str(one)}}}).success
        assert project.latest("kto_dataset")["valid"] == 48

    # As a user runs it (huggingface_hub reads HF_HUB_OFFLINE once, at import): a clear failure, fast.
    config = {"ops": {"raw_preferences": {"config": {"dataset_name": "nobody/nothing"}}}}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kto_pipeline.definitions",
            "--select",
            "raw_preferences",
            "--config-json",
            json.dumps(config),
        ],
        cwd=project.root,
        text=True,
        env={**project.env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(project.root / "hf")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    assert proc.returncode != 0 and "Hugging Face dataset hf://nobody/nothing: could not be loaded" in proc.stdout


def test_unreadable_file_fails_the_run_naming_it(project):
    bad = project.root / "data" / "raw" / "corrupt.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with project.instance() as instance:
        result = materialize(instance)
    message = failure_message(result)
    assert not result.success and f"{bad}: not a readable Parquet file" in message
    assert "Traceback" not in message


def test_label_balance_reports_weights_and_fails_one_class(project):
    with project.instance() as instance:
        assert materialize(instance).success
        passed, meta, _ = check_result(instance)
        assert passed and meta["desirable_weight"] >= 1 and meta["undesirable_weight"] >= 1
        one = project.root / "yes.jsonl"
        one.write_text(
            "".join(json.dumps({"prompt": f"q{i}", "completion": "a", "label": "👍"}) + "\n" for i in range(8))
        )
        materialize(instance, {"raw_preferences": {"config": {"local_file": str(one)}}})
        passed, meta, description = check_result(instance)
        assert not passed and description.startswith("one-class data: 8 desirable, 0 undesirable")
