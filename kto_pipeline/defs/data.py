"""raw_preferences -> kto_dataset."""


import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd

from kto_pipeline.artifacts import building, dir_digest, is_complete
from kto_pipeline.data import build_kto_dataset, label_balance
from kto_pipeline.defs.config import SourceConfig, SplitConfig
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore

GROUP = "data"


def _sources(config: SourceConfig) -> list[Path]:
    if config.local_file:
        path = Path(config.local_file)
        if not path.is_file():
            raise dg.Failure(f"--local-file {path}: no such file")
        return [path]
    raw = Path(config.raw_dir)
    if not raw.is_dir():
        raise dg.Failure(f"raw data folder {raw.resolve()} does not exist")
    return sorted(raw.glob("*.jsonl"))


@dg.asset(group_name=GROUP, kinds={"json"},
          description="Snapshot of the raw feedback files, byte for byte, keyed by their content hash.")
def raw_preferences(context: dg.AssetExecutionContext, config: SourceConfig,
                    artifacts: ArtifactStore) -> dg.MaterializeResult:
    sources = _sources(config)
    if not sources:
        raise dg.Failure(f"no *.jsonl files in {Path(config.raw_dir).resolve()}")
    staging = artifacts.path / "raw_preferences" / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for src in sources:
        shutil.copy2(src, staging / src.name)
    digest = dir_digest(staging)
    version = digest["sha256"][:16]
    out = artifacts.dir_for("raw_preferences", version)
    if is_complete(out):
        context.log.info(f"unchanged input: reusing {out}")
    else:
        with building(out) as tmp:
            for f in staging.iterdir():
                shutil.copy2(f, tmp / f.name)
            (tmp / "manifest.json").write_text(json.dumps({"sources": [str(s.resolve()) for s in sources]}))
    shutil.rmtree(staging)
    return dg.MaterializeResult(
        metadata={"path": str(out), "data_version": version, "files": len(sources),
                  "size_bytes": digest["size_bytes"]},
        data_version=dg.DataVersion(version))


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[raw_preferences],
          description="Validated KTO rows (train/eval parquet); bad rows quarantined with their reasons.")
def kto_dataset(context: dg.AssetExecutionContext, config: SplitConfig,
                artifacts: ArtifactStore) -> dg.MaterializeResult:
    raw_dir, raw_version = upstream(context, "raw_preferences")
    fraction = config.eval_fraction if config.split_dataset else 0.0
    out = artifacts.dir_for("kto_dataset", f"{raw_version}-{fraction}-{config.seed}")
    if not is_complete(out):
        with building(out) as tmp:
            build_kto_dataset(sorted(raw_dir.glob("*.jsonl")), tmp, eval_fraction=fraction, seed=config.seed)
    else:
        context.log.info(f"already built: {out}")
    report = json.loads((out / "report.json").read_text())
    balance = label_balance(report["n_desirable"], report["n_undesirable"])
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    return dg.MaterializeResult(
        metadata={
            "path": str(out),
            "data_version": report["data_version"],
            **{k: report[k] for k in ("records_in", "valid", "quarantined", "duplicates_dropped",
                                      "train_rows", "eval_rows", "n_desirable", "n_undesirable")},
            **balance,
            "quarantine_reasons": dg.MetadataValue.json(report["reasons"]),
            "quarantine_sample": dg.MetadataValue.md(quarantine.head(10).to_markdown(index=False)
                                                     if len(quarantine) else "none"),
        },
        data_version=dg.DataVersion(report["data_version"]))
