"""Release a model: a local content-addressed registry by default, the Hugging Face Hub when configured.

    from kto_pipeline.release import LocalRegistry, HubTarget, release_model
    result = release_model("artifacts/merged_model/abc", "me/my-kto-model", target=LocalRegistry("artifacts"))

Plain modules, no Dagster: the `hub_release` asset and `kto upload` both call `release_model`.
"""

from kto_pipeline.release.card import render_model_card
from kto_pipeline.release.content import ReleaseError, ReleaseResult, folder_manifest, version_id
from kto_pipeline.release.hub import HubTarget
from kto_pipeline.release.local import LocalRegistry
from kto_pipeline.release.publish import TARGETS, make_target, release_model, write_card
from kto_pipeline.release.save import SAVE_METHODS, stage_release

__all__ = [
    "HubTarget",
    "LocalRegistry",
    "ReleaseError",
    "ReleaseResult",
    "SAVE_METHODS",
    "TARGETS",
    "folder_manifest",
    "make_target",
    "release_model",
    "render_model_card",
    "stage_release",
    "version_id",
    "write_card",
]
