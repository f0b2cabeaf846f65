"""New data landing: a sensor that ingests every new raw file, a schedule that retrains only on new data.

  raw_files_sensor   watches $KTO_RAW_DIR (default data/raw) every 30 s. Each new file (settled: not
                     modified for a few seconds) becomes one dynamic partition of `raw_file` and one
                     `ingest_raw_file` run; a changed file is ingested again. The cursor (file -> size and
                     mtime) makes each file count once across ticks and restarts.
  retrain_schedule   on $KTO_RETRAIN_CRON (default "0 3 * * *"): launches `retrain` (raw_preferences and
                     everything downstream) only when a raw_file partition with valid rows was ingested after
                     the last trained adapter, and no scheduled retrain already started on that data
                     (a run blocked by a failing check is not retried until more data arrives).
Manual runs (UI, `kto train`, `dagster asset materialize`) are never gated. Both are on by default
when a daemon runs (`dagster dev`); factories build variants (other folder, cron, names) for tests.
"""

import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path

import dagster as dg

from kto_pipeline.defs.config import raw_dir as default_raw_dir
from kto_pipeline.defs.data import discover, ingest_raw_file, raw_files
from kto_pipeline.defs.resources import ArtifactStore

# Dagster 1.13 passes owners=None to every SensorDefinition it builds and then warns that `owners` is beta.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition.__init__`")


def settle_seconds_default() -> float:
    return float(os.environ.get("KTO_SETTLE_SECONDS") or 5)


def retrain_cron_default() -> str:
    # A schedule's cron is part of its definition: read when the definitions are built (kto_pipeline.definitions
    # builds them when Dagster loads them, not at import), not per tick.
    return os.environ.get("KTO_RETRAIN_CRON") or "0 3 * * *"


_BAD_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")  # Dagster refuses these in partition keys

retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("raw_preferences").downstream(),
    description="Rebuild the dataset from every validated raw file and retrain everything downstream.",
)


def _settled_files(root: Path, settle_seconds: float, artifact_root: Path) -> tuple[dict[str, str], list[str]]:
    """{partition key: "size:mtime_ns"} of the supported files under root; plus names that cannot be keys."""
    now, files, refused = time.time(), {}, []
    for p in discover(root, artifact_root):
        st = p.stat()
        if now - st.st_mtime < settle_seconds:
            continue  # probably still being written: next tick
        key = p.relative_to(root).as_posix()
        if any(bad in key for bad in _BAD_KEY_PARTS):
            refused.append(key)
            continue
        files[key] = f"{st.st_size}:{st.st_mtime_ns}"
    return files, refused


def build_raw_files_sensor(
    raw_dir: str | Path | None = None,
    *,
    name: str = "raw_files_sensor",
    settle_seconds: float | None = None,
    interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        job=ingest_raw_file,
        minimum_interval_seconds=interval_seconds,
        default_status=default_status,
        description="One raw_file partition and one ingest run per new or changed file in "
        f"{raw_dir or '$KTO_RAW_DIR (default data/raw)'}.",
    )
    def raw_files_sensor(
        context: dg.SensorEvaluationContext, artifacts: ArtifactStore
    ) -> dg.SensorResult | dg.SkipReason:
        root = Path(raw_dir or default_raw_dir()).resolve()  # None: $KTO_RAW_DIR, read per tick
        if not root.is_dir():
            return dg.SkipReason(f"{root} does not exist yet")
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        settle = settle_seconds_default() if settle_seconds is None else settle_seconds
        files, refused = _settled_files(root, settle, artifacts.path)  # the configured store, not a default
        for key in refused:
            context.log.warning(f"{key}: this file name cannot be a partition key; rename it to ingest it")
        todo = [k for k, stamp in files.items() if seen.get(k) != stamp]
        known = set(context.instance.get_dynamic_partitions(raw_files.name))
        new_keys = [k for k in todo if k not in known]
        # Files gone from disk leave the cursor (their partitions stay: the union keeps their rows).
        cursor = json.dumps(files, sort_keys=True)
        if not todo:
            return dg.SensorResult(skip_reason=f"no new files in {root}", cursor=cursor)
        config = {"ops": {"validate_raw_file": {"config": {"raw_dir": str(root)}}}}
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{k}@{files[k]}", run_config=config) for k in todo],
            dynamic_partitions_requests=[raw_files.build_add_request(new_keys)] if new_keys else [],
            cursor=cursor,
        )

    return raw_files_sensor


def retrain_decision(instance: dg.DagsterInstance, schedule_name: str) -> str | dict[str, str]:
    """Why not to retrain now (a sentence), or the tags of the run to launch."""
    trained = instance.get_latest_materialization_event(dg.AssetKey("lora_adapter"))
    since = trained.timestamp if trained else 0.0
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_file"), after_timestamp=since), limit=1000
    ).records
    fresh = [r for r in records if int(r.asset_materialization.metadata["valid"].value) > 0]
    when = dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds") if trained else None
    if not fresh:
        return "no new validated data " + (f"since the last training ({when})" if when else "yet")
    newest = max(r.timestamp for r in fresh)
    runs = instance.get_run_records(
        dg.RunsFilter(job_name=retrain.name, tags={"dagster/schedule_name": schedule_name}), limit=1
    )
    if runs and runs[0].create_timestamp.timestamp() > newest:
        run = runs[0].dagster_run
        return f"already retraining or retrained on this data: run {run.run_id} ({run.status.value})"
    return {"kto/new_files": str(len({r.partition_key for r in fresh})), "kto/new_data_at": str(int(newest))}


def build_retrain_schedule(
    cron: str | None = None,
    raw_dir: str | Path | None = None,
    *,
    name: str = "retrain_schedule",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING,
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        cron_schedule=cron or retrain_cron_default(),
        job=retrain,
        default_status=default_status,
        description="Retrain when new validated data arrived since the last training (never otherwise).",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        decision = retrain_decision(context.instance, name)
        if isinstance(decision, str):
            return dg.SkipReason(decision)
        root = Path(raw_dir or default_raw_dir()).resolve()
        return dg.RunRequest(run_config={"ops": {"raw_preferences": {"config": {"raw_dir": str(root)}}}}, tags=decision)

    return retrain_schedule
