"""Environment choices (where artifacts live, quality gates) as Dagster resources."""


import os
from pathlib import Path

import dagster as dg
import pydantic


class ArtifactStore(dg.ConfigurableResource):
    """Where every asset writes: {root}/{asset}/{version}/. Default: $KTO_ARTIFACT_ROOT or ./artifacts."""

    root: str = ""

    @property
    def path(self) -> Path:
        return Path(self.root or os.environ.get("KTO_ARTIFACT_ROOT", "artifacts")).resolve()

    def dir_for(self, asset: str, version: str) -> Path:
        return self.path / asset / version

    @property
    def cache_dir(self) -> Path:
        """Built base models (the tiny preset) live here, shared by all versions."""
        return self.path / "cache"


class QualityGates(dg.ConfigurableResource):
    """Thresholds of the blocking checks."""

    min_desirable_share: float = pydantic.Field(default=0.2, description="label_balance: lowest desirable share.")
    max_desirable_share: float = pydantic.Field(default=0.8, description="label_balance: highest desirable share.")
    max_eval_loss: float = pydantic.Field(default=0.6, description="eval_loss: highest eval KTO loss.")
    max_regression: float = pydantic.Field(default=0.01, description=(
        "eval_loss: how far the eval loss may exceed the released adapter's, both measured on the same eval rows "
        "(a retrain on new feedback must not release a worse model)."))
