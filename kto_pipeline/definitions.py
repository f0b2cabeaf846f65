"""The one Definitions object: `dagster dev` (workspace.yaml) and `dagster asset materialize -m` load it."""

import dagster as dg

from kto_pipeline.defs.automation import raw_files_sensor, retrain, retrain_schedule
from kto_pipeline.defs.checks import eval_loss, gguf_files_intact, kl_health, label_balance, long_rows
from kto_pipeline.defs.data import ingest_raw_file, kto_dataset, raw_file, raw_preferences
from kto_pipeline.defs.export import gguf_quantizations, merged_model
from kto_pipeline.defs.release import ReleaseTarget, hub_release
from kto_pipeline.defs.resources import ArtifactStore, QualityGates, RayCluster
from kto_pipeline.defs.training import lora_adapter

defs = dg.Definitions(
    assets=[raw_file, raw_preferences, kto_dataset, lora_adapter, merged_model, gguf_quantizations, hub_release],
    asset_checks=[label_balance, eval_loss, long_rows, kl_health, gguf_files_intact],
    jobs=[ingest_raw_file, retrain],
    sensors=[raw_files_sensor],
    schedules=[retrain_schedule],
    resources={
        "artifacts": ArtifactStore(),
        "quality_gates": QualityGates(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "ray_cluster": RayCluster(),  # used only with training.launcher='ray'; address: $RAY_ADDRESS
        "release_target": ReleaseTarget(),
    },
)
