"""Dagster run config, derived from the plain dataclasses in kto_pipeline.config (one source of truth).

Every training field becomes Optional with default None, meaning "take the preset's value"; the help
text of the dataclass field becomes the description shown in the Launchpad.
"""

import dataclasses
import os
import typing
from typing import Any, Optional

import dagster as dg
import pydantic

from kto_pipeline.config import SECTIONS, Config, _choice, get_config
from kto_pipeline.data.dataset import DEFAULT_MAX_CHARS


def _one_of(name: str, allowed: tuple[str, ...]) -> Any:
    def check(cls: type, value: Optional[str]) -> Optional[str]:
        if value is not None:
            _choice(name, value, allowed)
        return value

    return pydantic.field_validator(name)(classmethod(check))


def _overrides_class(name: str, dc: type) -> type[dg.Config]:
    hints = typing.get_type_hints(dc)
    # Dagster's config types take a Literal only as a required field, not an optional one: an optional Literal
    # becomes a string checked against its values when the config is built (the run fails before it starts).
    choices = {n: typing.get_args(h) for n, h in hints.items() if typing.get_origin(h) is typing.Literal}
    fields = {
        f.name: (
            Optional[str] if f.name in choices else Optional[hints[f.name]],
            pydantic.Field(default=None, description=f.metadata.get("help")),
        )
        for f in dataclasses.fields(dc)
    }
    validators = {f"_check_{n}": _one_of(n, allowed) for n, allowed in choices.items()}
    return pydantic.create_model(name, __base__=dg.Config, __validators__=validators, **fields)


ModelOverrides = _overrides_class("ModelOverrides", SECTIONS["model"])
LoraOverrides = _overrides_class("LoraOverrides", SECTIONS["lora"])
TrainingOverrides = _overrides_class("TrainingOverrides", SECTIONS["training"])


class TrainConfig(dg.Config):
    """A preset plus per-field overrides (unset fields keep the preset's value)."""

    preset: str = pydantic.Field(
        default="tiny", description="tiny (CPU demo), smol (SmolLM2-135M-Instruct, offline), 3b, 7b, 13b or 20b."
    )
    model: ModelOverrides = pydantic.Field(default_factory=ModelOverrides)
    lora: LoraOverrides = pydantic.Field(default_factory=LoraOverrides)
    training: TrainingOverrides = pydantic.Field(default_factory=TrainingOverrides)

    def resolve(self) -> Config:
        overrides: dict[str, Any] = {s: getattr(self, s).model_dump() for s in SECTIONS}
        return get_config(self.preset, overrides)


def raw_dir() -> str:
    """The folder the sensor watches, and the default source: $KTO_RAW_DIR (read when a run or tick needs it, not
    at import), else data/raw."""
    return os.environ.get("KTO_RAW_DIR") or "data/raw"


class SourceConfig(dg.Config):
    """Where raw feedback comes from (raw_preferences). local_file and/or dataset_name replace raw_dir."""

    raw_dir: str = pydantic.Field(
        default="",
        description=(
            "Folder of raw feedback files (.jsonl, .json, .csv, .tsv, .parquet; text formats also .gz/.bz2/.zst), "
            "read recursively; plus every file the sensor ingested from it earlier. Empty: $KTO_RAW_DIR or data/raw."
        ),
    )
    local_file: Optional[str] = pydantic.Field(default=None, description="Read only this file (--local-file).")
    dataset_name: Optional[str] = pydantic.Field(
        default=None,
        description=(
            "Hugging Face dataset: a Hub id (cache when HF_HUB_OFFLINE=1) or a local dataset folder (--dataset-name)."
        ),
    )
    dataset_file: Optional[str] = pydantic.Field(
        default=None, description=("One data file inside dataset_name (--dataset-file).")
    )
    dataset_split: str = pydantic.Field(default="train", description="Split of dataset_name to read.")


class SplitConfig(dg.Config):
    """How kto_dataset turns the validated rows into train/eval."""

    split_dataset: bool = pydantic.Field(default=True, description="Hold out an eval split (needed by eval_loss).")
    eval_fraction: float = pydantic.Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description=("Share of rows held out for eval, per label (whole prompts move together)."),
    )
    seed: int = pydantic.Field(default=42, description="Seed of the deterministic split.")
    max_chars: int = pydantic.Field(
        default=DEFAULT_MAX_CHARS,
        gt=0,
        description=("Rows whose prompt or completion is longer (in characters) are quarantined as too long."),
    )
