"""Environment choices (where artifacts live, quality gates) as Dagster resources."""


import os
from pathlib import Path
from typing import Any, Callable, Literal

import dagster as dg
import pydantic

from kto_pipeline.artifacts import Artifact, Store


class ArtifactStore(dg.ConfigurableResource):
    """Where every asset builds and reads: {root}/{asset}/{version}/, through kto_pipeline.artifacts.Store.

    root: a path or dg.EnvVar("KTO_ARTIFACT_ROOT"); empty: $KTO_ARTIFACT_ROOT at run time, else ./artifacts.
    """

    root: str = ""

    @property
    def store(self) -> Store:
        return Store(self.root or os.environ.get("KTO_ARTIFACT_ROOT") or "artifacts")

    @property
    def path(self) -> Path:
        return self.store.root

    def get_or_build(self, asset: str, version: str, build: Callable[[Path], Any], **kw: Any) -> Artifact:
        """The complete folder of (asset, version); build(scratch) runs only if none exists (see Store)."""
        return self.store.get_or_build(asset, version, build, **kw)

    def get(self, asset: str, version: str) -> Artifact:
        return self.store.get(asset, version)

    def dir_for(self, asset: str, version: str) -> Path:
        return self.store.path(asset, version)

    @property
    def cache_dir(self) -> Path:
        """Built base models (the tiny preset) live here, shared by all versions."""
        return self.store.cache_dir


class QualityGates(dg.ConfigurableResource):
    """Thresholds of the blocking checks."""

    min_desirable_share: float = pydantic.Field(default=0.2, description="label_balance: lowest desirable share.")
    max_desirable_share: float = pydantic.Field(default=0.8, description="label_balance: highest desirable share.")
    max_eval_loss: float = pydantic.Field(default=0.6, description="eval_loss: highest eval KTO loss.")
    max_regression: float = pydantic.Field(default=0.01, description=(
        "eval_loss: how far the eval loss may exceed the released adapter's, both measured on the same eval rows "
        "(a retrain on new feedback must not release a worse model)."))
    max_long_row_share: float = pydantic.Field(default=0.05, ge=0.0, le=1.0, description=(
        "long_rows: highest share of a split's rows that may be dropped or have their prompt cut for being longer "
        "than model.max_seq_length."))
    max_kl_zero_share: float = pydantic.Field(default=0.5, ge=0.0, le=1.0, description=(
        "kl_health: highest share of logged training steps whose KL estimate was 0."))
    kl_health_severity: Literal["WARN", "ERROR"] = pydantic.Field(default="WARN", description=(
        "kl_health: WARN reports a failure; ERROR also blocks everything downstream of lora_adapter."))
