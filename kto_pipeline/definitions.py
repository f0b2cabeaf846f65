"""The one Definitions object: `dagster dev` (workspace.yaml) and `dagster asset materialize -m` load it.

Built when Dagster loads the code location (`@dg.definitions`), not when this module is imported: the retrain
schedule's cron comes from $KTO_RETRAIN_CRON, and nothing in kto_pipeline reads the environment at import time.
`from kto_pipeline.definitions import defs` builds it on first use.
"""

import functools

import dagster as dg

from kto_pipeline.defs.automation import build_raw_files_sensor, build_retrain_schedule, retrain
from kto_pipeline.defs.checks import eval_loss, gguf_files_intact, kl_health, label_balance, long_rows
from kto_pipeline.defs.data import ingest_raw_file, kto_dataset, raw_file, raw_preferences
from kto_pipeline.defs.export import gguf_quantizations, merged_model
from kto_pipeline.defs.progress import ProgressTempFileReader
from kto_pipeline.defs.release import ReleaseTarget, hub_release
from kto_pipeline.defs.resources import ArtifactStore, QualityGates, RayCluster
from kto_pipeline.defs.training import lora_adapter


@functools.cache
def build_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_file, raw_preferences, kto_dataset, lora_adapter, merged_model, gguf_quantizations, hub_release],
        asset_checks=[label_balance, eval_loss, long_rows, kl_health, gguf_files_intact],
        jobs=[ingest_raw_file, retrain],
        sensors=[build_raw_files_sensor()],
        schedules=[build_retrain_schedule()],
        resources={
            "artifacts": ArtifactStore(),
            "quality_gates": QualityGates(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(message_reader=ProgressTempFileReader()),
            "ray_cluster": RayCluster(),  # used only with training.launcher='ray'; address: $RAY_ADDRESS
            "release_target": ReleaseTarget(),
        },
    )


@dg.definitions
def kto_definitions() -> dg.Definitions:
    return build_defs()


def __getattr__(name: str):
    if name == "defs":
        return build_defs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
