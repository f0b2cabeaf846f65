"""Raw feedback -> validated KTO rows. Plain functions, no Dagster."""

from kto_pipeline.data.dataset import build_kto_dataset, label_balance

__all__ = ["build_kto_dataset", "label_balance"]
