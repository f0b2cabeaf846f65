"""raw_file (one partition per file) -> raw_preferences (their union) -> kto_dataset (train/eval/quarantine).

Why this shape. `dagster asset materialize --select '*'` (and `kto train`, which runs it) refuses a
selection holding a partitioned asset unless a --partition is given ("Asset has partitions, but no
'--partition' option was provided"), so no materializable asset of the graph may be partitioned. The
per-file partitions therefore live on `raw_file`, an external asset (AssetSpec) whose partitions are
materialized by the `ingest_raw_file` job; the sensor (automation.py) adds one dynamic partition per
new file and launches that job for it. `raw_preferences` stays unpartitioned: it is the union of every
validated partition — a file deleted from disk since stays in, its validated rows live in the
artifact store; delete its partition to drop it — and it validates any file the sensor has not seen
itself, through the same content-addressed cache. So a fresh instance without a daemon works, and
each file is validated once however it arrives.
"""

from pathlib import Path
from typing import Any

import dagster as dg

from kto_pipeline.artifacts import is_complete, version_of
from kto_pipeline.data import DataFileError, build_from_validated, ingest_file, is_supported, label_balance
from kto_pipeline.data import validate as validation
from kto_pipeline.data.hf import snapshot
from kto_pipeline.defs.config import SourceConfig, SplitConfig, raw_dir
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore
from kto_pipeline.reports import DatasetReport, FileReport, RawManifest

GROUP = "data"
raw_files = dg.DynamicPartitionsDefinition(name="raw_files")

raw_file = dg.AssetSpec(
    "raw_file",
    partitions_def=raw_files,
    group_name=GROUP,
    kinds={"json", "csv", "parquet"},
    description="One raw feedback file (partition key: its path under the watched folder), validated by the "
    "ingest_raw_file job: rows and quarantine in {artifact_root}/raw_file/<digest>/.",
)


def _fail(e: Exception) -> dg.Failure:
    return dg.Failure(description=str(e))


def file_metadata(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(folder),
        "source": report["source"],
        "digest": report.get("digest", ""),
        "records_in": report["records_in"],
        "valid": report["valid"],
        "quarantined": report["quarantined"],
        "n_desirable": report["n_desirable"],
        "n_undesirable": report["n_undesirable"],
        "quarantine_reasons": dg.MetadataValue.json(report["reasons"]),
    }


class IngestConfig(dg.Config):
    raw_dir: str = ""  # empty: $KTO_RAW_DIR or data/raw


@dg.op(description="Validate one raw file (the run's partition) and record it as a raw_file partition.")
def validate_raw_file(context: dg.OpExecutionContext, config: IngestConfig, artifacts: ArtifactStore) -> None:
    path = Path(config.raw_dir or raw_dir()) / context.partition_key
    try:
        folder, report = ingest_file(path, artifacts.path / "raw_file")
    except DataFileError as e:
        raise _fail(e) from None
    context.log.info(f"{path}: {report['valid']} valid, {report['quarantined']} quarantined -> {folder}")
    context.log_event(
        dg.AssetMaterialization("raw_file", partition=context.partition_key, metadata=file_metadata(folder, report))
    )


@dg.job(partitions_def=raw_files, description="Ingest one new raw file: the sensor launches it per file.")
def ingest_raw_file() -> None:
    validate_raw_file()


def discover(raw: Path, artifact_root: Path) -> list[Path]:
    """Supported files under raw, recursively, in name order (never the pipeline's own outputs)."""
    root = artifact_root.resolve()
    return sorted(p for p in raw.rglob("*") if is_supported(p) and root not in p.resolve().parents)


def _ingested_partitions(instance: dg.DagsterInstance, raw: Path) -> dict[str, Path]:
    """source path -> validated folder, for every raw_file partition ingested from under `raw`."""
    out: dict[str, Path] = {}
    for key in instance.get_dynamic_partitions(raw_files.name):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_file"), asset_partitions=[key]), limit=1
        ).records
        if not records:
            continue
        meta = records[0].asset_materialization.metadata
        source, folder = str(meta["source"].value), Path(str(meta["path"].value))
        if Path(source).is_relative_to(raw) and is_complete(folder):
            out[source] = folder
    return out


def collect_sources(
    context: dg.AssetExecutionContext, config: SourceConfig, artifacts: ArtifactStore
) -> list[tuple[Path, dict[str, Any]]]:
    """Validated folders (and reports) of every source the config names."""
    cache = artifacts.path / "raw_file"
    found: list[tuple[Path, dict[str, Any]]] = []
    try:
        if config.local_file or config.dataset_name:
            if config.local_file:
                path = Path(config.local_file)
                if not path.is_file():
                    raise DataFileError(f"--local-file {path}: no such file")
                found.append(ingest_file(path, cache))
            if config.dataset_name:
                local = Path(config.dataset_name)
                if local.is_file():  # a plain file given as a dataset name: read it as a file
                    found.append(ingest_file(local, cache))
                else:
                    parquet, label = snapshot(
                        config.dataset_name, cache / "_hf", data_file=config.dataset_file, split=config.dataset_split
                    )
                    found.append(ingest_file(parquet, cache, source=label))
            return found
        raw = Path(config.raw_dir or raw_dir()).resolve()
        if not raw.is_dir():
            raise DataFileError(f"raw data folder {raw} does not exist (set raw_dir, --local-file or --dataset-name)")
        files = discover(raw, artifacts.path)
        found = [ingest_file(p, cache) for p in files]
    except DataFileError as e:
        raise _fail(e) from None
    on_disk = {str(p.resolve()) for p in files}
    for source, folder in sorted(_ingested_partitions(context.instance, raw).items()):
        if source not in on_disk:  # ingested earlier, gone from disk since: still part of the union
            context.log.info(f"{source}: no longer on disk, using its ingested copy {folder}")
            found.append((folder, FileReport.read(folder).to_dict()))
    if not found:
        raise dg.Failure(
            description=f"no input files in {raw}: add .jsonl/.json/.csv/.tsv/.parquet files, "
            "or pass --local-file / --dataset-name"
        )
    return found


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "none"
    esc = [[str(r.get(c, "")).replace("|", "\\|").replace("\n", "⏎")[:200] for c in columns] for r in rows]
    return "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in esc]
    )


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    deps=[raw_file],
    description="The union of all raw feedback files, each validated once (content-addressed cache): "
    "raw_dir (recursively) plus every file ingested by the sensor, or --local-file / "
    "--dataset-name.",
)
def raw_preferences(
    context: dg.AssetExecutionContext, config: SourceConfig, artifacts: ArtifactStore
) -> dg.MaterializeResult:
    found = collect_sources(context, config, artifacts)
    unique: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder, report in found:
        unique.setdefault(folder.name, (folder, report))
    entries = [
        {"folder": str(f), **{k: r.get(k) for k in ("source", "digest", "records_in", "valid", "quarantined")}}
        for f, r in unique.values()
    ]
    version = version_of(validated_files=sorted(unique), report=RawManifest.SCHEMA_VERSION)
    out = artifacts.get_or_build("raw_preferences", version, lambda tmp: RawManifest(files=entries).write(tmp)).path
    reasons: dict[str, int] = {}
    for _, r in unique.values():
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return dg.MaterializeResult(
        metadata={
            "path": str(out),
            "data_version": version,
            "files": len(entries),
            "records_in": sum(e["records_in"] for e in entries),
            "valid": sum(e["valid"] for e in entries),
            "quarantined": sum(e["quarantined"] for e in entries),
            "quarantine_reasons": dg.MetadataValue.json(reasons),
            "sources": dg.MetadataValue.md(_table(entries, ["source", "records_in", "valid", "quarantined"])),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    deps=[raw_preferences],
    description="Validated KTO rows: train/eval parquet (split grouped by prompt, stratified by label), "
    "duplicates dropped, bad rows quarantined with their reasons.",
)
def kto_dataset(
    context: dg.AssetExecutionContext, config: SplitConfig, artifacts: ArtifactStore
) -> dg.MaterializeResult:
    raw = upstream(context, "raw_preferences", RawManifest)
    folders = [Path(e["folder"]) for e in raw.report.files]
    fraction = config.eval_fraction if config.split_dataset else 0.0
    version = version_of(
        raw_preferences=raw.version,
        eval_fraction=fraction,
        seed=config.seed,
        max_chars=config.max_chars,
        validator=validation.VERSION,
        report=DatasetReport.SCHEMA_VERSION,
    )
    built = artifacts.get_or_build(
        "kto_dataset",
        version,
        lambda tmp: build_from_validated(
            folders, tmp, eval_fraction=fraction, seed=config.seed, max_chars=config.max_chars
        ),
    )
    out = built.path
    if not built.built:
        context.log.info(f"already built: {out}")
    report = DatasetReport.read(out)
    overall = label_balance(report.n_desirable, report.n_undesirable)
    weights = report.recommended_weights
    return dg.MaterializeResult(
        metadata={
            "path": str(out),
            "data_version": report.data_version,
            **{
                k: getattr(report, k)
                for k in (
                    "records_in",
                    "valid",
                    "quarantined",
                    "duplicates_dropped",
                    "train_rows",
                    "eval_rows",
                    "n_desirable",
                    "n_undesirable",
                )
            },
            "desirable_share": overall["desirable_share"],
            # what training uses unless the user sets the weights (the paper's rule on the train rows)
            "desirable_weight": weights["desirable_weight"],
            "undesirable_weight": weights["undesirable_weight"],
            "quarantine_reasons": dg.MetadataValue.json(report.reasons),
            "quarantine_sample": dg.MetadataValue.md(_table(report.samples, ["reason", "source", "line", "raw"])),
            "sources": dg.MetadataValue.md(
                _table(report.to_dict()["sources"], ["source", "records_in", "valid", "quarantined"])
            ),
        },
        data_version=dg.DataVersion(report.data_version),
    )
