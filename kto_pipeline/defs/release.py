"""hub_release: publish the merged model (+ GGUF files + model card) to the local registry or the Hub.

Thin: it gathers paths and facts from upstream materializations and calls
kto_pipeline.release.release_model. The token is read from HF_TOKEN inside the release code at run time;
no resource, config or metadata field can hold it, so it never reaches run config or event storage.
"""


from typing import Literal, Optional

import dagster as dg
import pydantic

from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import ArtifactStore
from kto_pipeline.release import HubTarget, LocalRegistry, ReleaseError, release_model

# The quality gates a release needs: check name -> the asset it checks.
GATES = {"label_balance": "kto_dataset", "eval_loss": "lora_adapter", "long_rows": "lora_adapter"}
GGUF_ASSET = "gguf_quantizations"
CARD_TRAINING_KEYS = {
    "model": ("model_name", "max_seq_length"),
    "lora": ("r", "alpha", "dropout", "target_modules"),
    "training": ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "beta", "desirable_weight", "undesirable_weight",
                 "lr_scheduler_type", "warmup_ratio", "seed"),
}


class ReleaseTarget(dg.ConfigurableResource):
    """Where releases go. There is deliberately no token field: the hub target reads HF_TOKEN at run time."""

    target: Literal["local", "hub"] = pydantic.Field(
        default="local", description="local: content-addressed registry under the artifact root; hub: the Hub.")
    repo_id: str = pydantic.Field(default="kto-pipeline/kto-model", description="Repo id (namespace/name).")
    endpoint: str = pydantic.Field(default="", description="Hub endpoint URL; empty: huggingface_hub's default.")
    private: bool = pydantic.Field(default=True, description="Create the Hub repo private.")
    registry_root: str = pydantic.Field(default="", description="Local registry root; empty: the artifact root.")
    max_attempts: int = pydantic.Field(default=5, description="Tries per Hub call on 5xx/timeouts (backoff).")
    backoff_s: float = pydantic.Field(default=1.0, description="First retry wait; doubles each retry (max 16 s).")

    def build(self, artifacts: ArtifactStore) -> LocalRegistry | HubTarget:
        if self.target == "local":
            return LocalRegistry(self.registry_root or artifacts.path)
        return HubTarget(endpoint=self.endpoint or None, private=self.private, max_attempts=self.max_attempts,
                         backoff_s=self.backoff_s)


class ReleaseConfig(dg.Config):
    save_method: Literal["merged_16bit", "lora", "merged_4bit"] = pydantic.Field(
        default="merged_16bit", description="merged_16bit (merged, 16-bit), lora (adapter only) or merged_4bit "
                                            "(bitsandbytes NF4, CUDA only).")
    tag: Optional[str] = pydantic.Field(default=None, description="Version tag; default release-<content hash>.")
    include_gguf: bool = pydantic.Field(default=True, description="Add the verified GGUF files when built.")
    gguf_types: list[str] = pydantic.Field(
        default=["Q4_K_M", "Q5_K_M", "Q8_0"],
        description="GGUF types to release when gguf_quantizations built them; add F16/BF16 for the unquantized "
                    "file (as large as the merged weights).")
    message: Optional[str] = pydantic.Field(default=None, description="Commit message.")


def _latest_storage_id(instance, key: str) -> int | None:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    return records[0].storage_id if records else None


def gate_problems(instance) -> list[str]:
    """Why the current kto_dataset / lora_adapter may not be released (empty: all gates passed on them)."""
    problems = []
    for check, asset in GATES.items():
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        evaluation = record.evaluation if record is not None else None
        latest = _latest_storage_id(instance, asset)
        if evaluation is None:
            problems.append(f"{check} has not been evaluated on {asset}")
        elif not evaluation.passed:
            problems.append(f"{check} failed on {asset}: {evaluation.description or 'see the check'}")
        elif evaluation.target_materialization_data is None or (
                evaluation.target_materialization_data.storage_id != latest):
            problems.append(f"{check} passed on an older {asset}, not on the current one; run the check again")
    return problems


def _check_metadata(instance, check: str, asset: str) -> dict:
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    meta = record.evaluation.metadata if record is not None and record.evaluation is not None else {}
    return {k: v.value for k, v in meta.items()}


def _materialization_metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()
            if isinstance(v.value, (str, int, float, bool)) and k != "training_curves"}


def _training_config(instance, adapter_meta: dict) -> dict:
    """The resolved training config of the run that trained the current adapter (preset + overrides)."""
    from kto_pipeline.defs.config import TrainConfig

    event = instance.get_latest_materialization_event(dg.AssetKey("lora_adapter"))
    run = instance.get_run_by_id(event.run_id) if event is not None else None
    op_config = ((run.run_config or {}).get("ops", {}).get("lora_adapter", {}).get("config", {})) if run else {}
    try:
        resolved = TrainConfig(**op_config).resolve().to_dict()
    except Exception:  # noqa: BLE001 - the card is informative; a config that no longer parses is skipped
        return {}
    out = {"preset": op_config.get("preset", "tiny")}
    for section, keys in CARD_TRAINING_KEYS.items():
        out.update({f"{section}.{k}": resolved[section][k] for k in keys if k in resolved.get(section, {})})
    for k in ("steps", "backend", "desirable_weight", "undesirable_weight"):
        if k in adapter_meta:
            out[f"run.{k}"] = adapter_meta[k]
    return out


def _gguf_inputs(context, instance, types: list[str]) -> tuple[list, list[dict]]:
    """The verified GGUF files of the wanted types built from the current merged model, with their figures."""
    import json

    ours, theirs = _latest_storage_id(instance, "merged_model"), _latest_storage_id(instance, GGUF_ASSET)
    if theirs is None or ours is None or theirs < ours:  # none yet, or built from an older merged model
        return [], []
    folder, _ = upstream(context, GGUF_ASSET)
    wanted = {t.upper() for t in types}
    files, figures = [], []
    for f in sorted(folder.glob("*.gguf")):
        sidecar = f.with_name(f.name + ".verified.json")  # written only for files that passed verification
        if not sidecar.is_file():
            continue
        meta = json.loads(sidecar.read_text())
        if str(meta.get("type", "")).upper() in wanted:
            files.append(f)
            figures.append(meta)
    return files, figures


@dg.asset(group_name="release", kinds={"huggingface"}, deps=["merged_model", GGUF_ASSET],
          description="One repo: merged weights (or adapter), verified GGUF files, model card; local registry by "
                      "default, the Hub when configured. Blocked unless label_balance, eval_loss and long_rows passed.")
def hub_release(context: dg.AssetExecutionContext, config: ReleaseConfig, artifacts: ArtifactStore,
                release_target: ReleaseTarget) -> dg.MaterializeResult:
    instance = context.instance
    problems = gate_problems(instance)
    if problems:
        raise dg.Failure("release blocked by quality gates: " + "; ".join(problems))
    merged_dir, merged_version = upstream(context, "merged_model")
    adapter_dir, adapter_version = upstream(context, "lora_adapter")
    dataset = _materialization_metadata(instance, "kto_dataset")
    adapter = _materialization_metadata(instance, "lora_adapter")
    balance = _check_metadata(instance, "label_balance", "kto_dataset")
    gguf_files, gguf_figures = (_gguf_inputs(context, instance, config.gguf_types) if config.include_gguf
                                else ([], []))
    card = {
        "base_model": adapter.get("base_model"),
        "dataset": {k: dataset[k] for k in ("data_version", "valid", "train_rows", "eval_rows", "n_desirable",
                                            "n_undesirable", "quarantined", "duplicates_dropped") if k in dataset},
        "label_balance": {"desirable_share": balance.get("desirable_share"), "min_share": balance.get("min_share"),
                          "max_share": balance.get("max_share"), "passed": True},
        "training": _training_config(instance, adapter),
        "eval": {k: adapter[k] for k in ("eval_loss", "train_loss", "final_loss", "rewards_chosen",
                                         "rewards_rejected", "rewards_margins", "kl") if k in adapter},
        "gguf": gguf_figures,
        "lineage": {"kto_dataset": dataset.get("data_version"), "lora_adapter": adapter_version,
                    "merged_model": merged_version,
                    **({GGUF_ASSET: _materialization_metadata(instance, GGUF_ASSET).get("data_version")}
                       if gguf_files else {})},
    }
    source = adapter_dir if config.save_method == "lora" else merged_dir
    try:
        result = release_model(source, release_target.repo_id, target=release_target.build(artifacts),
                               save_method=config.save_method, gguf_files=gguf_files, card_info=card,
                               tag=config.tag, message=config.message, base_model=card["base_model"])
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    context.log.info(f"{result.target} release {result.tag} of {result.repo_id}: "
                     f"{'new ' + ('commit' if result.target == 'hub' else 'version') if result.created else 'unchanged'}"
                     f" ({result.location})")
    meta = result.as_metadata()
    meta["location"] = (dg.MetadataValue.url(result.location) if result.target == "hub"
                        else dg.MetadataValue.path(result.location))
    meta["gguf_files"] = len(gguf_files)
    meta["lora_adapter"] = adapter_version  # the champion the next training is compared with (checks.eval_loss)
    if "eval_loss" in adapter:
        meta["eval_loss"] = float(adapter["eval_loss"])
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(result.version))
