"""The sensor and the schedule, evaluated with Dagster's test contexts against a real (sqlite) instance,
and the runs they ask for executed for real: ingestion, and one real (tiny) training."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from kto_pipeline.definitions import defs
from kto_pipeline.defs.automation import build_raw_files_sensor, build_retrain_schedule
from kto_pipeline.defs.resources import ArtifactStore

pytestmark = pytest.mark.slow  # real sensor and schedule ticks against an instance

SCHEDULE = "test_retrain"
RESOURCES = {"artifacts": ArtifactStore()}  # the root: $KTO_ARTIFACT_ROOT of the test project, read at run time


def rows(n: int, tag: str, share: float = 0.5) -> str:
    return "".join(
        json.dumps({"prompt": f"{tag} question {i}", "completion": f"{tag} answer {i}", "label": i < n * share}) + "\n"
        for i in range(n)
    )


def tick(sensor: dg.SensorDefinition, instance, cursor: str | None):
    """One sensor evaluation, with what the daemon would do with its result: add the requested
    partitions, then execute the requested runs."""
    data = sensor.evaluate_tick(
        dg.build_sensor_context(
            instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs, resources=RESOURCES
        )
    )
    for req in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    job = defs.resolve_job_def("ingest_raw_file")
    for rr in data.run_requests or []:
        assert job.execute_in_process(
            instance=instance, partition_key=rr.partition_key, run_config=rr.run_config, tags=rr.tags
        ).success
    return data


def schedule_says(schedule: dg.ScheduleDefinition, instance):
    data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    return data.run_requests[0] if data.run_requests else data.skip_message


def ingested(instance) -> dict[str, dict]:
    out = {}
    for key in instance.get_dynamic_partitions("raw_files"):
        rec = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_file"), asset_partitions=[key]), limit=1
        ).records
        out[key] = {k: v.value for k, v in rec[0].asset_materialization.metadata.items()} if rec else {}
    return out


def test_sensor_adds_one_partition_per_new_file_with_a_cursor(tmp_path, project):
    drop = tmp_path / "drop"
    sensor = build_raw_files_sensor(drop, name="test_sensor", settle_seconds=0)
    with project.instance() as instance:
        assert (
            "does not exist"
            in sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=RESOURCES)).skip_message
        )
        drop.mkdir()
        first = tick(sensor, instance, None)
        assert not first.run_requests and "no new files" in first.skip_message

        (drop / "a.jsonl").write_text(rows(10, "a"))
        (drop / "sub").mkdir()
        (drop / "sub" / "b.csv").write_text("prompt,completion,label\nq1,a1,yes\nq2,a2,no\nq3,,yes\n")
        (drop / "notes.txt").write_text("not data")
        (drop / ".hidden.jsonl").write_text(rows(2, "h"))
        second = tick(sensor, instance, first.cursor)
        assert sorted(r.partition_key for r in second.run_requests) == ["a.jsonl", "sub/b.csv"]
        assert sorted(instance.get_dynamic_partitions("raw_files")) == ["a.jsonl", "sub/b.csv"]
        meta = ingested(instance)
        assert (meta["a.jsonl"]["valid"], meta["a.jsonl"]["quarantined"]) == (10, 0)
        assert (meta["sub/b.csv"]["valid"], meta["sub/b.csv"]["quarantined"]) == (2, 1)
        assert Path(meta["sub/b.csv"]["path"], "rows.arrow").exists()

        third = tick(sensor, instance, second.cursor)  # nothing new: the cursor remembers both files
        assert not third.run_requests

        time.sleep(0.01)
        with open(drop / "a.jsonl", "a") as f:  # a changed file is ingested again, same partition
            f.write(rows(1, "late"))
        fourth = tick(sensor, instance, third.cursor)
        assert [r.partition_key for r in fourth.run_requests] == ["a.jsonl"]
        assert not fourth.dynamic_partitions_requests
        assert ingested(instance)["a.jsonl"]["records_in"] == 11

        fresh = build_raw_files_sensor(drop, name="test_sensor", settle_seconds=3600)
        (drop / "c.jsonl").write_text(rows(4, "c"))  # still "being written" for an hour-long settle time
        assert not fresh.evaluate_tick(
            dg.build_sensor_context(
                instance=instance,
                instance_ref=instance.get_ref(),
                cursor=fourth.cursor,
                definitions=defs,
                resources=RESOURCES,
            )
        ).run_requests


def test_schedule_retrains_only_on_new_validated_data(tmp_path, project):
    drop = tmp_path / "drop"
    drop.mkdir()
    sensor = build_raw_files_sensor(drop, name="test_sensor", settle_seconds=0)
    schedule = build_retrain_schedule("0 3 * * *", drop, name=SCHEDULE)
    implicit = defs.resolve_implicit_global_asset_job_def()
    with project.instance() as instance:
        assert "no new validated data yet" in schedule_says(schedule, instance)

        (drop / "bad.jsonl").write_text('{"prompt": "no label"}\n')  # ingested, but nothing valid in it
        cursor = tick(sensor, instance, None).cursor
        assert "no new validated data" in schedule_says(schedule, instance)

        (drop / "first.jsonl").write_text(rows(24, "first"))
        cursor = tick(sensor, instance, cursor).cursor
        request = schedule_says(schedule, instance)
        assert isinstance(request, dg.RunRequest) and request.tags["kto/new_files"] == "1"
        assert request.run_config["ops"]["raw_preferences"]["config"]["raw_dir"] == str(drop.resolve())

        # A manual training run (never gated): real TRL training of the tiny model, on the sensor's drop.
        config = {
            "ops": {
                **request.run_config["ops"],
                "lora_adapter": {"config": {"training": {"max_steps": 2, "eval_steps": 0}}},
            }
        }
        result = implicit.execute_in_process(
            instance=instance,
            run_config=config,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(k) for k in ("raw_preferences", "kto_dataset", "lora_adapter")],
        )
        assert result.success
        assert project.latest("kto_dataset")["valid"] == 24
        assert "since the last training" in schedule_says(schedule, instance)

        (drop / "second.jsonl").write_text(rows(12, "second"))
        tick(sensor, instance, cursor)
        request = schedule_says(schedule, instance)
        assert isinstance(request, dg.RunRequest)

        # The schedule's own run starts (here: only its data steps) -> the next tick does not pile on.
        retrain = defs.resolve_job_def("retrain")
        assert retrain.execute_in_process(
            instance=instance,
            run_config=request.run_config,
            tags={**request.tags, "dagster/schedule_name": SCHEDULE},
            asset_selection=[dg.AssetKey("raw_preferences"), dg.AssetKey("kto_dataset")],
        ).success
        assert "already retraining or retrained on this data" in schedule_says(schedule, instance)
        assert project.latest("kto_dataset")["valid"] == 36  # the union of every validated partition


def test_definitions_register_the_sensor_schedule_and_jobs():
    assert defs.resolve_sensor_def("raw_files_sensor").job_name == "ingest_raw_file"
    schedule = defs.resolve_schedule_def("retrain_schedule")
    assert schedule.job_name == "retrain" and schedule.cron_schedule == os.environ.get("KTO_RETRAIN_CRON", "0 3 * * *")
    targets = {k.to_user_string() for k in defs.resolve_job_def("retrain").asset_layer.selected_asset_keys}
    assert {"raw_preferences", "kto_dataset", "lora_adapter"} <= targets and "raw_file" not in targets


@pytest.fixture
def project(project):  # noqa: F811  the shared fixture, with the automation variables cleared
    for var in ("KTO_RAW_DIR", "KTO_RETRAIN_CRON", "KTO_SETTLE_SECONDS"):
        os.environ.pop(var, None)
    return project
