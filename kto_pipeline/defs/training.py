"""lora_adapter: KTO training in its own process (Dagster Pipes), one at a time (pool "gpu")."""

import base64
import os
import sys
import tempfile
from pathlib import Path

import dagster as dg

from kto_pipeline.artifacts import exclusive, is_complete, version_of
from kto_pipeline.defs.config import TrainConfig
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore, RayCluster
from kto_pipeline.reports import LongRowsReport, TrainingMetrics
from kto_pipeline.training.run import launch_command


def gpu_lock_path() -> Path:
    """One training at a time per machine, whatever project or Dagster instance it comes from: $KTO_GPU_LOCK
    (read when a training starts, not at import), else a file in the temp folder."""
    return Path(os.environ.get("KTO_GPU_LOCK") or Path(tempfile.gettempdir()) / "kto_pipeline-gpu.lock")


def long_rows_metadata(report: LongRowsReport) -> dict:
    """Per split: rows kept whole, prompt cut, dropped (numbers, to chart across runs) and as tables."""
    splits = report.splits
    meta: dict = {
        f"{split}_rows_{k}": getattr(s, k) for split, s in splits.items() for k in ("whole", "prompt_cut", "dropped")
    }
    cols = [
        ("split", "string"),
        ("rows", "int"),
        ("whole", "int"),
        ("prompt_cut", "int"),
        ("dropped", "int"),
        ("turns_removed", "int"),
        ("prompt_tokens_cut", "int"),
        ("tokens_p50", "int"),
        ("tokens_p95", "int"),
        ("tokens_max", "int"),
    ]
    records = [
        dg.TableRecord(
            {
                "split": split,
                **{
                    k: getattr(s, k)
                    for k in ("rows", "whole", "prompt_cut", "dropped", "turns_removed", "prompt_tokens_cut")
                },
                "tokens_p50": s.tokens_needed["0.5"],
                "tokens_p95": s.tokens_needed["0.95"],
                "tokens_max": s.tokens_needed["1.0"],
            }
        )
        for split, s in splits.items()
    ]
    bins = [b.tokens for b in splits["train"].histogram]
    hist = [
        dg.TableRecord(
            {
                "tokens": b,
                "fits": splits["train"].histogram[i].fits,
                **{split: s.histogram[i].rows for split, s in splits.items()},
            }
        )
        for i, b in enumerate(bins)
    ]
    hist_cols = [("tokens", "string"), ("fits", "bool")] + [(split, "int") for split in splits]
    meta.update(
        {
            "long_rows": dg.MetadataValue.table(
                records, dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in cols])
            ),
            "token_lengths": dg.MetadataValue.table(
                hist, dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in hist_cols])
            ),
            "long_rows_policy": (f"{report.policy} at max_seq_length={report.max_seq_length} ({report.trl_alone})"),
        }
    )
    if report.dropped_rows_file:
        meta["dropped_rows"] = dg.MetadataValue.path(report.dropped_rows_file)
    return meta


def adapter_metadata(out: Path, version: str) -> dict:
    metrics = TrainingMetrics.read(out)
    meta: dict = {
        "path": str(out),
        "data_version": version,
        "backend": metrics.backend,
        "base_model": metrics.base_model,
    }
    # the fields reports.TrainingMetrics marks as metadata, as numbers to chart across runs
    for k in TrainingMetrics.metadata_fields():
        if getattr(metrics, k) is not None:
            meta[k] = float(getattr(metrics, k))
    meta.update(long_rows_metadata(metrics.long_rows))
    plot = out / "training_curves.png"
    if plot.exists():
        b64 = base64.b64encode(plot.read_bytes()).decode()
        meta["training_curves"] = dg.MetadataValue.md(f"![loss and rewards](data:image/png;base64,{b64})")
    return meta


def released_adapter(context: dg.AssetExecutionContext, artifacts: ArtifactStore, version: str) -> Path | None:
    """The adapter behind the latest hub_release, when it is another one and still on disk (the champion)."""
    records = context.instance.fetch_materializations(dg.AssetKey("hub_release"), limit=1).records
    meta = records[0].asset_materialization.metadata if records else {}
    released = meta["lora_adapter"].value if "lora_adapter" in meta else None
    if not released or released == version:
        return None
    path = artifacts.dir_for("lora_adapter", str(released))
    return path if is_complete(path) else None


@dg.asset(
    group_name="training",
    kinds={"pytorch", "peft"},
    deps=["kto_dataset"],
    pool="gpu",
    description="LoRA adapter trained with TRL's KTOTrainer in a subprocess (or a Ray job: "
    "training.launcher); resumes from checkpoints.",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    artifacts: ArtifactStore,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    ray_cluster: RayCluster,
) -> dg.MaterializeResult:
    dataset = upstream(context, "kto_dataset")
    train_config = config.resolve()
    version = version_of(
        kto_dataset=dataset.version, training=train_config.fingerprint(), report=TrainingMetrics.SCHEMA_VERSION
    )
    champion = released_adapter(context, artifacts, version)
    reported: dict = {}

    def train(scratch: Path) -> None:
        # The store holds this version's lock and found it incomplete; the GPU lock only orders different
        # versions. The pool is the scheduler, the lock the guarantee: on the default SQLite storage two steps
        # asking for the pool's one slot at the same instant can both get it (its claim is a read, then a write).
        if champion:
            context.log.info(f"will compare with the released adapter {champion.name} on the same eval rows")
        with exclusive(
            gpu_lock_path(),
            f"run {context.run.run_id}, training {version}",
            on_wait=lambda holder: context.log.info(f"waiting for the GPU, held by {holder}"),
        ):
            extras = {
                "config": train_config.to_dict(),
                "dataset_dir": str(Path(dataset.path).resolve()),
                "output_dir": str(scratch.resolve()),
                "cache_dir": str(artifacts.cache_dir.resolve()),
                "champion": str(champion.resolve()) if champion else None,
                "version": version,
            }
            t = train_config.training
            if t.launcher == "ray":  # the same extras, to a Ray job on the cluster (every node reaches these paths)
                invocation = ray_cluster.run(
                    context, extras, launch_command(ray_cluster.python, t.num_processes, t.launcher)
                )
            else:
                invocation = pipes_subprocess_client.run(
                    command=launch_command(sys.executable, t.num_processes, t.launcher), context=context, extras=extras
                )
            result = invocation.get_materialize_result()
        reported.update(result.metadata or {})

    # resumable: a killed training continues from its checkpoints in the scratch folder.
    adapter = artifacts.get_or_build(
        "lora_adapter",
        version,
        train,
        resumable=True,
        holder=f"run {context.run.run_id}",
        on_wait=lambda holder: context.log.info(f"{version} is being trained by {holder}: waiting for it"),
    )
    if not adapter.built:
        context.log.info(f"already trained for this data and config: {adapter.path}")
    meta = {**reported, **adapter_metadata(adapter.path, version), "kto_dataset": dataset.version}
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))
