"""hub_release: publish the merged model (+ GGUF files + model card) to the local registry or the Hub.

Thin: it gathers paths and facts from upstream materializations and calls
kto_pipeline.release.release_model. The token is read from HF_TOKEN inside the release code at run time;
no resource, config or metadata field can hold it, so it never reaches run config or event storage.
"""

from typing import Literal, Optional

import dagster as dg
import pydantic

from kto_pipeline.defs.lineage import Upstream, upstream
from kto_pipeline.defs.resources import ArtifactStore
from kto_pipeline.export.gguf import DEFAULT_QUANTIZATIONS
from kto_pipeline.release import HubTarget, LocalRegistry, ReleaseError, release_model
from kto_pipeline.release.content import repo_id_problem
from kto_pipeline.reports import GGUFFile, ReportError

# The quality gates a release needs: check name -> the asset it checks.
GATES = {"label_balance": "kto_dataset", "eval_loss": "lora_adapter", "long_rows": "lora_adapter"}
GGUF_ASSET = "gguf_quantizations"
CARD_TRAINING_KEYS = {
    "model": ("model_name", "max_seq_length"),
    "lora": ("r", "alpha", "dropout", "target_modules"),
    "training": (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "beta",
        "desirable_weight",
        "undesirable_weight",
        "lr_scheduler_type",
        "warmup_ratio",
        "seed",
    ),
}


class ReleaseTarget(dg.ConfigurableResource):
    """Where releases go. There is deliberately no token field: the hub target reads HF_TOKEN at run time."""

    target: Literal["local", "hub"] = pydantic.Field(
        default="local", description="local: content-addressed registry under the artifact root; hub: the Hub."
    )
    repo_id: str = pydantic.Field(default="kto-pipeline/kto-model", description="Repo id (namespace/name).")
    endpoint: str = pydantic.Field(default="", description="Hub endpoint URL; empty: huggingface_hub's default.")
    private: bool = pydantic.Field(default=True, description="Create the Hub repo private.")
    registry_root: str = pydantic.Field(default="", description="Local registry root; empty: the artifact root.")
    max_attempts: int = pydantic.Field(default=5, description="Tries per Hub call on 5xx/timeouts (backoff).")
    backoff_s: float = pydantic.Field(default=1.0, description="First retry wait; doubles each retry (max 16 s).")
    verify: bool = pydantic.Field(
        default=True,
        description=(
            "hub: download every file back after the commit and compare its sha256 before tagging (costs one download "
            "of the release; a file the Hub stored wrong fails the release, naming it)."
        ),
    )

    @pydantic.field_validator("repo_id")
    @classmethod
    def _valid_repo_id(cls, value: str) -> str:
        problem = repo_id_problem(value)
        if problem:  # at resource setup, before any asset runs
            raise ValueError(f"release_target.repo_id: {problem}")
        return value

    def build(self, artifacts: ArtifactStore) -> LocalRegistry | HubTarget:
        if self.target == "local":
            return LocalRegistry(self.registry_root or artifacts.path)
        return HubTarget(
            endpoint=self.endpoint or None,
            private=self.private,
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            verify=self.verify,
        )


class ReleaseConfig(dg.Config):
    save_method: Literal["merged_16bit", "lora", "merged_4bit"] = pydantic.Field(
        default="merged_16bit",
        description="merged_16bit (merged, 16-bit), lora (adapter only) or merged_4bit (bitsandbytes NF4, CUDA only).",
    )
    tag: Optional[str] = pydantic.Field(default=None, description="Version tag; default release-<content hash>.")
    include_gguf: bool = pydantic.Field(default=True, description="Add the verified GGUF files when built.")
    gguf_types: list[str] = pydantic.Field(
        default=list(DEFAULT_QUANTIZATIONS),
        description="GGUF types to release when gguf_quantizations built them; add F16/BF16 for the unquantized "
        "file (as large as the merged weights).",
    )
    message: Optional[str] = pydantic.Field(default=None, description="Commit message.")


def gate_problems(instance, consumed: dict[str, Upstream]) -> list[str]:
    """Why the kto_dataset / lora_adapter this release consumes may not be released (empty: all gates passed on
    exactly those materializations)."""
    problems = []
    for check, asset in GATES.items():
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        evaluation = record.evaluation if record is not None else None
        if evaluation is None:
            problems.append(f"{check} has not been evaluated on {asset}")
        elif evaluation.target_materialization_data is None or (
            evaluation.target_materialization_data.run_id != consumed[asset].run_id
        ):
            problems.append(
                f"{check} was last evaluated on another {asset} than {consumed[asset].version}, the one "
                "this release consumes; run the check again"
            )
        elif not evaluation.passed:
            problems.append(f"{check} failed on {asset}: {evaluation.description or 'see the check'}")
    return problems


def lineage_problems(dataset: Upstream, adapter: Upstream, merged: Upstream) -> list[str]:
    """Weights, metrics and data of one release must be one lineage: the merged weights hold this adapter, and the
    adapter was trained on this dataset."""
    problems = []
    holds = merged.metadata.get("lora_adapter")
    if holds != adapter.version:
        problems.append(
            f"merged_model {merged.version} holds lora_adapter {holds or '(not recorded)'}, but the lora_adapter "
            f"whose metrics would be released is {adapter.version}: materialize merged_model (and "
            "gguf_quantizations) from it, e.g. select 'lora_adapter*'"
        )
    trained_on = adapter.metadata.get("kto_dataset")
    if trained_on is not None and trained_on != dataset.version:
        problems.append(
            f"lora_adapter {adapter.version} was trained on kto_dataset {trained_on}, not on "
            f"{dataset.version}: materialize lora_adapter and what follows from this dataset"
        )
    return problems


def _check_metadata(instance, check: str, asset: str) -> dict:
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    meta = record.evaluation.metadata if record is not None and record.evaluation is not None else {}
    return {k: v.value for k, v in meta.items()}


def _plain_metadata(up: Upstream) -> dict:
    return {k: v for k, v in up.metadata.items() if isinstance(v, (str, int, float, bool)) and k != "training_curves"}


def _training_config(instance, adapter: Upstream) -> dict:
    """The resolved training config of the run that trained this adapter (preset + overrides)."""
    from kto_pipeline.defs.config import TrainConfig

    run = instance.get_run_by_id(adapter.run_id)
    op_config = ((run.run_config or {}).get("ops", {}).get("lora_adapter", {}).get("config", {})) if run else {}
    try:
        resolved = TrainConfig(**op_config).resolve().to_dict()
    except Exception:  # noqa: BLE001 - the card is informative; a config that no longer parses is skipped
        return {}
    out = {"preset": op_config.get("preset", "tiny")}
    for section, keys in CARD_TRAINING_KEYS.items():
        out.update({f"{section}.{k}": resolved[section][k] for k in keys if k in resolved.get(section, {})})
    adapter_meta = _plain_metadata(adapter)
    for k in ("steps", "backend", "desirable_weight", "undesirable_weight"):
        if k in adapter_meta:
            out[f"run.{k}"] = adapter_meta[k]
    return out


def _gguf_inputs(context, merged: Upstream, types: list[str]) -> tuple[Upstream | None, list, list[dict]]:
    """The verified GGUF files of the wanted types built from exactly this merged model, with their figures."""
    try:
        gguf = upstream(context, GGUF_ASSET)
    except dg.Failure:  # none built (or gone): release without GGUF files
        return None, [], []
    if gguf.metadata.get("merged_model") != merged.version:
        context.log.info(f"{GGUF_ASSET} {gguf.version} was built from another merged_model: not released")
        return None, [], []
    folder = gguf.path
    wanted = {t.upper() for t in types}
    files, figures = [], []
    for f in sorted(folder.glob("*.gguf")):
        sidecar = GGUFFile.sidecar(f)  # written only for files that passed verification
        if not sidecar.is_file():
            continue
        try:
            meta = GGUFFile.read(sidecar)
        except ReportError as e:
            raise dg.Failure(description=str(e)) from None
        if meta.type.upper() in wanted:
            files.append(f)
            figures.append(meta.to_dict())
    return gguf, files, figures


@dg.asset(
    group_name="release",
    kinds={"huggingface"},
    deps=["merged_model", GGUF_ASSET],
    description="One repo: merged weights (or adapter), verified GGUF files, model card; local registry by "
    "default, the Hub when configured. Blocked unless label_balance, eval_loss and long_rows passed.",
)
def hub_release(
    context: dg.AssetExecutionContext, config: ReleaseConfig, artifacts: ArtifactStore, release_target: ReleaseTarget
) -> dg.MaterializeResult:
    instance = context.instance
    merged = upstream(context, "merged_model")
    adapter_up = upstream(context, "lora_adapter")
    dataset_up = upstream(context, "kto_dataset")
    problems = lineage_problems(dataset_up, adapter_up, merged)
    if problems:
        raise dg.Failure("release refused, weights and metrics would not match: " + "; ".join(problems))
    problems = gate_problems(instance, {"kto_dataset": dataset_up, "lora_adapter": adapter_up})
    if problems:
        raise dg.Failure("release blocked by quality gates: " + "; ".join(problems))
    merged_dir, merged_version = merged.path, merged.version
    adapter_dir, adapter_version = adapter_up.path, adapter_up.version
    dataset, adapter = _plain_metadata(dataset_up), _plain_metadata(adapter_up)
    balance = _check_metadata(instance, "label_balance", "kto_dataset")
    gguf, gguf_files, gguf_figures = (
        _gguf_inputs(context, merged, config.gguf_types) if config.include_gguf else (None, [], [])
    )
    card = {
        "base_model": adapter.get("base_model"),
        "dataset": {
            k: dataset[k]
            for k in (
                "data_version",
                "valid",
                "train_rows",
                "eval_rows",
                "n_desirable",
                "n_undesirable",
                "quarantined",
                "duplicates_dropped",
            )
            if k in dataset
        },
        "label_balance": {
            "desirable_share": balance.get("desirable_share"),
            "min_share": balance.get("min_share"),
            "max_share": balance.get("max_share"),
            "passed": True,
        },
        "training": _training_config(instance, adapter_up),
        "eval": {
            k: adapter[k]
            for k in (
                "eval_loss",
                "train_loss",
                "final_loss",
                "rewards_chosen",
                "rewards_rejected",
                "rewards_margins",
                "kl",
            )
            if k in adapter
        },
        "gguf": gguf_figures,
        "lineage": {
            "kto_dataset": dataset.get("data_version"),
            "lora_adapter": adapter_version,
            "merged_model": merged_version,
            **({GGUF_ASSET: gguf.version} if gguf_files else {}),
        },
    }
    source = adapter_dir if config.save_method == "lora" else merged_dir
    try:
        result = release_model(
            source,
            release_target.repo_id,
            target=release_target.build(artifacts),
            save_method=config.save_method,
            gguf_files=gguf_files,
            card_info=card,
            tag=config.tag,
            message=config.message,
            base_model=card["base_model"],
        )
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    context.log.info(
        f"{result.target} release {result.tag} of {result.repo_id}: "
        f"{'new ' + ('commit' if result.target == 'hub' else 'version') if result.created else 'unchanged'}"
        f" ({result.location})"
    )
    meta = result.as_metadata()
    meta["location"] = (
        dg.MetadataValue.url(result.location) if result.target == "hub" else dg.MetadataValue.path(result.location)
    )
    meta["gguf_files"] = len(gguf_files)
    meta["lora_adapter"] = adapter_version  # the champion the next training is compared with (checks.eval_loss)
    if "eval_loss" in adapter:
        meta["eval_loss"] = float(adapter["eval_loss"])
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(result.version))
