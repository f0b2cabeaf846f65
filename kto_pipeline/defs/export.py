"""merged_model: the adapter merged into 16-bit base weights."""


import json

import dagster as dg

from kto_pipeline.artifacts import building, dir_digest, is_complete
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore
from kto_pipeline.export.merge import merge_adapter
from kto_pipeline.training.model import resolve_model_path


@dg.asset(group_name="export", kinds={"safetensors"}, deps=["lora_adapter"],
          description="Base weights with the LoRA adapter merged in (safetensors + tokenizer).")
def merged_model(context: dg.AssetExecutionContext, artifacts: ArtifactStore) -> dg.MaterializeResult:
    adapter_dir, version = upstream(context, "lora_adapter")
    out = artifacts.dir_for("merged_model", version)
    if not is_complete(out):
        metrics = json.loads((adapter_dir / "metrics.json").read_text())
        base = metrics["base_model"]
        if base == "tiny" or base.endswith("/cache/tiny"):
            base = resolve_model_path("tiny", artifacts.cache_dir)
        with building(out) as tmp:
            merge_adapter(base, adapter_dir, tmp)
    else:
        context.log.info(f"already merged: {out}")
    info = json.loads((out / "merge_info.json").read_text())
    digest = dir_digest(out, "*.safetensors")
    return dg.MaterializeResult(
        metadata={"path": str(out), "data_version": version, "base_model": info["base_model"],
                  "dtype": info["dtype"], "parameters": info["parameters"], **digest},
        data_version=dg.DataVersion(version))
