"""Dagster run config, derived from the plain dataclasses in kto_pipeline.config (one source of truth).

Every training field becomes Optional with default None, meaning "take the preset's value"; the help
text of the dataclass field becomes the description shown in the Launchpad.
"""


import dataclasses
import typing
from typing import Any, Optional

import dagster as dg
import pydantic

from kto_pipeline.config import SECTIONS, Config, get_config


def _overrides_class(name: str, dc: type) -> type[dg.Config]:
    hints = typing.get_type_hints(dc)
    fields = {
        f.name: (Optional[hints[f.name]], pydantic.Field(default=None, description=f.metadata.get("help")))
        for f in dataclasses.fields(dc)
    }
    return pydantic.create_model(name, __base__=dg.Config, **fields)


ModelOverrides = _overrides_class("ModelOverrides", SECTIONS["model"])
LoraOverrides = _overrides_class("LoraOverrides", SECTIONS["lora"])
TrainingOverrides = _overrides_class("TrainingOverrides", SECTIONS["training"])


class TrainConfig(dg.Config):
    """A preset plus per-field overrides (unset fields keep the preset's value)."""

    preset: str = pydantic.Field(default="tiny", description="tiny (CPU demo), 3b, 7b, 13b or 20b.")
    model: ModelOverrides = pydantic.Field(default_factory=ModelOverrides)
    lora: LoraOverrides = pydantic.Field(default_factory=LoraOverrides)
    training: TrainingOverrides = pydantic.Field(default_factory=TrainingOverrides)

    def resolve(self) -> Config:
        overrides: dict[str, Any] = {s: getattr(self, s).model_dump() for s in SECTIONS}
        return get_config(self.preset, overrides)


class SourceConfig(dg.Config):
    raw_dir: str = pydantic.Field(default="data/raw", description="Folder of raw feedback files (*.jsonl).")
    local_file: Optional[str] = pydantic.Field(default=None, description="Read only this file instead of raw_dir.")


class SplitConfig(dg.Config):
    split_dataset: bool = pydantic.Field(default=True, description="Hold out an eval split (needed by eval_loss).")
    eval_fraction: float = pydantic.Field(default=0.2, description="Share of prompts held out for eval.")
    seed: int = pydantic.Field(default=42, description="Seed of the deterministic split.")
