"""Environment choices (where artifacts live, quality gates) as Dagster resources."""


import os
from pathlib import Path

import dagster as dg


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

    min_desirable_share: float = 0.2
    max_desirable_share: float = 0.8
    max_eval_loss: float = 0.6
