"""The race examples of issue 16, each run for real (Dagster CLI processes on one instance, tiny training)."""

from __future__ import annotations

import json

import pytest

from kto_pipeline_tests.conftest import run_ok

pytestmark = pytest.mark.slow  # Dagster materializations and training

RUNS = 6


def test_concurrent_materializations_of_one_dataset_version_all_succeed_and_build_once(project):
    """Sensor, schedule and a UI click can start the same version at once. Before the store: runs failed with
    FileNotFoundError on `<version>.partial/...` (one run deleted another's scratch folder) and every run built."""
    run_ok(project.materialize_cli("raw_preferences"))  # a warmed instance (schema migrated), the input ready
    procs = [project.materialize_cli("kto_dataset") for _ in range(RUNS)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    failed = [o[-2000:] for p, o in zip(procs, outs) if p.returncode != 0]
    assert failed == []
    assert sum("already built" not in o for o in outs) == 1, "exactly one run built the version"
    folders = [p for p in (project.artifacts / "kto_dataset").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / ".complete").is_file()
    report = json.loads((folders[0] / "report.json").read_text())
    assert report["train_rows"] > 0 and (folders[0] / "train.parquet").is_file()


def test_racing_trainings_of_one_version_train_once(project):
    """Two runs of one adapter version at once: the second waits, then reuses the first's adapter. Before: it
    "resumed" the finished checkpoint, trained 0 steps and overwrote metrics.json with empty losses."""
    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    procs = [project.materialize_cli("lora_adapter") for _ in range(2)]
    outs = [run_ok(p) for p in procs]
    assert sum("already trained for this data and config" in o for o in outs) == 1
    (folder,) = [p for p in (project.artifacts / "lora_adapter").iterdir() if not p.name.startswith(".")]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["tokens_per_s"] > 0 and metrics["train_loss"] is not None


def test_release_refuses_the_weights_of_one_adapter_with_the_metrics_of_another(project):
    """Train A -> merge -> retrain B with only lora_adapter selected -> release. Before: A's weights were published
    with B's metrics and lineage, and B recorded as the champion."""
    run_ok(project.materialize_cli("raw_preferences,kto_dataset,lora_adapter,merged_model"))
    a = project.latest("lora_adapter")["data_version"]
    assert project.latest("merged_model")["lora_adapter"] == a
    run_ok(project.materialize_cli("lora_adapter", {"ops": {"lora_adapter": {"config": {"training": {"seed": 7}}}}}))
    b = project.latest("lora_adapter")["data_version"]
    assert b != a
    proc = project.materialize_cli("hub_release")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert f"merged_model {project.latest('merged_model')['data_version']} holds lora_adapter {a}" in out
    assert f"the lora_adapter whose metrics would be released is {b}" in out
    assert project.latest("hub_release") == {}

    # merged again from B in the same run: weights, metrics and lineage agree
    run_ok(project.materialize_cli("merged_model,hub_release"))
    release = project.latest("hub_release")
    assert release["lora_adapter"] == b and project.latest("merged_model")["lora_adapter"] == b


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_ten_cli_and_graphql_runs_of_one_new_data_version_build_it_once(storage, request):
    """One trial of `benchmarks/concurrency.py data` (20 per storage there): 5 `dagster asset materialize` and 5
    GraphQL launches on a running webserver, all of raw_preferences + kto_dataset of one new version, at once."""
    from benchmarks.concurrency import DataSession, data_trial
    from kto_pipeline_tests.conftest import REPO
    from kto_pipeline_tests.postgres import InstanceHomes

    cluster = request.getfixturevalue("postgres") if storage == "postgres" else None
    with InstanceHomes(storage, cluster) as homes:
        session = DataSession(homes, str(REPO), graphql=True)
        try:
            r = data_trial(session, 0, n_cli=5, n_graphql=5, rows=20_000)
        finally:
            session.close()
    assert r["failed"] == 0, r["errors"]
    assert r["instance_runs"] == 10, r
    assert (r["builds"], r["corrupt"], r["mislabelled"]) == (1, 0, 0), r
