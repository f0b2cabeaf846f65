"""What an upstream asset produced *for this run*: the materialization this run (or the run it re-executes)
recorded, and only when the upstream was not part of it, the latest one in the instance.

"Latest in the instance" alone is wrong under concurrency: with two runs of different configs in flight,
merged_model would merge whichever adapter finished last, not the one its own run trained.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import dagster as dg

from kto_pipeline.artifacts import COMPLETE, is_complete
from kto_pipeline.reports import Report, ReportError

R = TypeVar("R", bound=Report)


@dataclass(frozen=True)
class Upstream(Generic[R]):
    """An upstream artifact as this run consumes it: folder, version, materialization, and its typed report."""

    key: str
    path: Path
    version: str
    metadata: dict[str, Any]  # the materialization's metadata, plain values
    run_id: str  # of the run that materialized it: which check evaluations apply to it (one materialization per
    #             run for an unpartitioned asset; storage ids differ between SQLite's run and index shards)
    in_run: bool  # materialized by this run (or the run it re-executes), not taken as "the latest"
    report: R = None  # type: ignore[assignment]  # its report file, read through kto_pipeline.reports (None: not asked)


def _run_chain(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """This run, then the run it re-executes, and so on (steps skipped on re-execution ran there)."""
    ids, parent = [run.run_id], run.parent_run_id
    while parent and parent not in ids:
        ids.append(parent)
        record = instance.get_run_by_id(parent)
        parent = record.parent_run_id if record else None
    return ids


def _in_run(instance: dg.DagsterInstance, run: dg.DagsterRun, key: str) -> dg.EventLogRecord | None:
    for run_id in _run_chain(instance, run):
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, ascending=False
        ).records
        for record in records:
            mat = record.asset_materialization
            if mat is not None and mat.asset_key == dg.AssetKey(key):
                return record
    return None


Context = dg.AssetExecutionContext | dg.AssetCheckExecutionContext


@overload
def upstream(context: Context, key: str) -> Upstream[Any]: ...
@overload
def upstream(context: Context, key: str, report: type[R]) -> Upstream[R]: ...
def upstream(context: Context, key: str, report: type[R] | None = None) -> Upstream[Any]:
    """The folder and version of `key` this run consumes, and with `report` its report read from that folder;
    fails when it is missing, was never completed, or its report cannot be read (the message says why)."""
    instance = context.instance
    record = _in_run(instance, context.run, key)
    in_run = record is not None
    if record is None:
        records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
        record = records[0] if records else None
    if record is None or record.asset_materialization is None:
        raise dg.Failure(f"{key} has not been materialized yet: materialize it first (or select it too).")
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    path = Path(str(meta["path"]))
    if not is_complete(path):
        raise dg.Failure(f"{key}: its folder {path} is gone or incomplete (no {COMPLETE}): materialize {key} again.")
    try:
        typed = report.read(path) if report is not None else None
    except ReportError as e:
        raise dg.Failure(description=str(e)) from None
    return Upstream(key, path, str(meta["data_version"]), meta, record.run_id, in_run, typed)
