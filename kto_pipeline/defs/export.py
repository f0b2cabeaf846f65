"""merged_model: the adapter merged into 16-bit base weights; gguf_quantizations: verified GGUF files."""

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import pydantic

from kto_pipeline.artifacts import dir_digest, version_of
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore
from kto_pipeline.export.gguf import DEFAULT_QUANTIZATIONS
from kto_pipeline.export.merge import MergeError, merge_adapter, plan_merge
from kto_pipeline.reports import GGUFFile, GGUFResults, MergeInfo, TrainingMetrics
from kto_pipeline.training.model import local_model_name, resolve_model_path


class MergeConfig(dg.Config):
    """What merged_model merges the adapter into when the base is a pre-quantized 4-bit checkpoint (every preset)."""

    quantized_base: Literal["original", "dequantize"] = pydantic.Field(
        default="original",
        description=(
            "original: its 16-bit original (like Unsloth's merged_16bit; downloaded on first use); dequantize: the "
            "4-bit weights dequantized to 16-bit, exactly the model that was trained (offline)."
        ),
    )
    base_16bit: Optional[str] = pydantic.Field(
        default=None,
        description=(
            "Hub id or folder of that 16-bit original; empty: looked up from the 4-bit checkpoint's name "
            "(Unsloth's table, e.g. unsloth/mistral-7b-v0.3-bnb-4bit -> unsloth/mistral-7b-v0.3)."
        ),
    )


@dg.asset(
    group_name="export",
    kinds={"safetensors"},
    deps=["lora_adapter"],
    description="Base weights with the LoRA adapter merged in, 16-bit (safetensors + tokenizer).",
)
def merged_model(
    context: dg.AssetExecutionContext, config: MergeConfig, artifacts: ArtifactStore
) -> dg.MaterializeResult:
    adapter = upstream(context, "lora_adapter", TrainingMetrics)
    adapter_dir = adapter.path
    base = adapter.report.base_model
    local = local_model_name(base)
    if local:  # built locally: this artifact root's copy (built again if it is missing)
        base = resolve_model_path(local, artifacts.cache_dir)
    try:
        plan = plan_merge(base, config.quantized_base, config.base_16bit)
    except MergeError as e:
        raise dg.Failure(description=str(e)) from None
    # plan.key: what it goes into
    version = version_of(lora_adapter=adapter.version, merged_into=plan.key, report=MergeInfo.SCHEMA_VERSION)

    def merge(tmp: Path) -> None:
        context.log.info(f"merging {adapter_dir} into {plan.describe()}")
        merge_adapter(base, adapter_dir, tmp, plan=plan)

    merged = artifacts.get_or_build("merged_model", version, merge)
    out = merged.path
    if not merged.built:
        context.log.info(f"already merged: {out}")
    info = MergeInfo.read(out)
    digest = dir_digest(out, "*.safetensors")
    return dg.MaterializeResult(
        # lora_adapter: which adapter these weights hold; hub_release refuses to pair them with another's metrics
        metadata={
            "path": str(out),
            "data_version": version,
            "lora_adapter": adapter.version,
            "base_model": info.base_model,
            "merged_into": info.merged_into,
            "dtype": info.dtype,
            "parameters": info.parameters,
            **digest,
        },
        data_version=dg.DataVersion(version),
    )


class GGUFConfig(dg.Config):
    """Which GGUF files to build from merged_model, and how close to it each must stay."""

    quantizations: list[str] = pydantic.Field(
        default=list(DEFAULT_QUANTIZATIONS),
        description="llama.cpp quantization types built from the F16/BF16 file (the seed's --gguf-quantizations).",
    )
    base: str = pydantic.Field(default="F16", description="Unquantized file the converter writes: F16 or BF16.")
    thresholds: dict[str, dict[str, float]] = pydantic.Field(
        default_factory=dict,
        description="Per-type overrides of the verification limits, e.g. {'Q4_K_M': {'min_top1': 0.9}}; keys "
        "max_rel_error, min_top1, max_mean_kl. Defaults: kto_pipeline.export.gguf.DEFAULT_THRESHOLDS.",
    )
    name: str = pydantic.Field(default="model", description="Files are named {name}-{TYPE}.gguf.")
    transformers_check: bool = pydantic.Field(
        default=True, description="Also load the F16/BF16 file with transformers (gguf_file=) and compare."
    )
    system_prompt: Optional[str] = pydantic.Field(default=None, description="SYSTEM line of the Ollama Modelfile.")

    def fingerprint(self, llama_cpp: str) -> str:
        blob = json.dumps({**self.model_dump(), "llama_cpp": llama_cpp}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def gguf_table(results: list[GGUFFile]) -> dg.TableMetadataValue:
    def pct(x):
        return None if x is None else round(100 * x, 2)

    cols = [
        ("file", "string"),
        ("type", "string"),
        ("size_mb", "float"),
        ("bits_per_weight", "float"),
        ("rel_error", "float"),
        ("top1_pct", "float"),
        ("decisive_positions", "int"),
        ("mean_kl", "float"),
        ("tokenization_match", "bool"),
        ("passed", "bool"),
        ("sha256", "string"),
    ]
    records = [
        dg.TableRecord(
            {
                "file": r.file,
                "type": r.type,
                "size_mb": round(r.size_bytes / 2**20, 3),
                "bits_per_weight": r.bits_per_weight,
                "rel_error": float(f"{r.verification['rel_error']:.4g}"),
                "top1_pct": pct(r.verification["top1_agreement"]),
                "decisive_positions": r.verification["decisive_positions"],
                "mean_kl": float(f"{r.verification['mean_kl']:.4g}"),
                "tokenization_match": r.verification["tokenization_match"],
                "passed": r.passed,
                "sha256": r.sha256,
            }
        )
        for r in results
    ]
    return dg.MetadataValue.table(records, dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in cols]))


@dg.asset(
    group_name="export",
    kinds={"gguf", "llamacpp"},
    deps=["merged_model"],
    description="merged_model as GGUF (F16 + quantizations), each file loaded back in llama.cpp and "
    "compared with the HF model; a file that fails verification fails the asset.",
)
def gguf_quantizations(
    context: dg.AssetExecutionContext, config: GGUFConfig, artifacts: ArtifactStore
) -> dg.MaterializeResult:
    # Failing verification raises (no materialization is recorded, so hub_release never sees the files);
    # the blocking check gguf_files_intact then re-checks the recorded files before anything downstream.
    from kto_pipeline.export.gguf import GGUFExportError, GGUFVerificationError, export_gguf, llama_cpp_version
    from kto_pipeline.export.llama import NativeCrash

    merged = upstream(context, "merged_model")
    version = version_of(
        merged_model=merged.version, gguf=config.fingerprint(llama_cpp_version()), report=GGUFResults.SCHEMA_VERSION
    )

    def export(scratch: Path) -> None:
        try:
            results = export_gguf(
                merged.path,
                scratch,
                config.quantizations,
                config.thresholds,
                base=config.base,
                name=config.name,
                transformers_check=config.transformers_check,
                system_prompt=config.system_prompt,
                log=context.log.info,
            )
        except GGUFVerificationError as e:
            raise dg.Failure(
                description=str(e),
                metadata={"path": str(scratch), "files": gguf_table([GGUFFile.of(r) for r in e.results])},
            ) from None
        except (GGUFExportError, NativeCrash, ValueError) as e:
            raise dg.Failure(description=str(e)) from None
        GGUFResults(files=[GGUFFile.of(r) for r in results]).write(scratch)

    # resumable: files already verified in a failed attempt are not built again (their sidecars say so), and
    # the rejected ones stay for inspection.
    built = artifacts.get_or_build("gguf_quantizations", version, export, resumable=True)
    out = built.path
    if not built.built:
        context.log.info(f"already built and verified: {out}")
    results = GGUFResults.read(out).files
    modelfile = next(r.modelfile for r in results if r.modelfile is not None)
    base = results[0]
    meta = {
        "path": str(out),
        "data_version": version,
        "merged_model": merged.version,
        "files": gguf_table(results),
        "total_size_bytes": sum(r.size_bytes for r in results),
        "llama_cpp_version": base.llama_cpp_version,
        "thresholds": {r.type: r.thresholds for r in results},
        # built in the scratch folder: the Modelfile is read from where it is now
        "modelfile": dg.MetadataValue.md(f"```\n{(out / Path(modelfile['path']).name).read_text()}```"),
        "chat_format": modelfile["chat_format"] or "not recognised (Ollama reads the GGUF's template)",
    }
    if base.transformers_loadback is not None:
        tf = base.transformers_loadback
        meta.update(
            {"transformers_rel_error": tf["rel_error"], "transformers_tokenization_match": tf["tokenization_match"]}
        )
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))
