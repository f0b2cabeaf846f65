"""Environment choices (where artifacts live, quality gates) as Dagster resources."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pydantic

from kto_pipeline.artifacts import Artifact, Store
from kto_pipeline.defs.progress import ray_job_reader


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
    max_regression: float = pydantic.Field(
        default=0.01,
        description=(
            "eval_loss: how far the eval loss may exceed the released adapter's, both measured on the same eval rows "
            "(a retrain on new feedback must not release a worse model)."
        ),
    )
    max_long_row_share: float = pydantic.Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description=(
            "long_rows: highest share of a split's rows that may be dropped or have their prompt cut for being longer "
            "than model.max_seq_length."
        ),
    )
    max_kl_zero_share: float = pydantic.Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=("kl_health: highest share of logged training steps whose KL estimate was 0."),
    )
    kl_health_severity: Literal["WARN", "ERROR"] = pydantic.Field(
        default="WARN",
        description=("kl_health: WARN reports a failure; ERROR also blocks everything downstream of lora_adapter."),
    )


RAY_EXTRA = "training.launcher='ray' needs the ray extra: pip install 'kto_pipeline[ray]' (ray and dagster-ray)"


class RayCluster(dg.ConfigurableResource):
    """The Ray cluster that lora_adapter trains on when training.launcher is 'ray' (one Ray job per training, submitted
    through dagster-ray's PipesRayJobClient). The number of workers is training.num_processes.

    Every node must reach the artifact root at the same path (rank 0 writes the adapter there; the job's driver reads
    it back), e.g. a shared volume mounted on the Dagster machine and on every Ray node."""

    address: str = pydantic.Field(
        default="",
        description=(
            "The Ray dashboard's job-submission address, e.g. http://head:8265 "
            "(dg.EnvVar('RAY_ADDRESS')); for KubeRay, "
            "the RayCluster's head service. Empty: $RAY_ADDRESS when the training starts."
        ),
    )
    gpus_per_worker: float = pydantic.Field(
        default=0,
        ge=0,
        description=("GPUs per Ray Train worker: 1 trains each worker on its own GPU (NCCL); 0 trains on CPUs (gloo)."),
    )
    cpus_per_worker: float = pydantic.Field(default=1, gt=0, description="CPUs Ray reserves for each worker.")
    worker_resources: dict[str, float] = pydantic.Field(
        default_factory=dict,
        description=(
            "Custom Ray resources each worker needs, e.g. {'a100': 1} to place workers on the nodes that offer it."
        ),
    )
    storage_path: str = pydantic.Field(
        default="",
        description=(
            "Where Ray Train keeps the checkpoints, reachable by every node (a shared path, or s3://, gs://); Ray "
            "restarts the workers from the latest one. Empty: the adapter's own folder under the artifact root "
            "(<adapter>/checkpoints, as the local launcher)."
        ),
    )
    max_failures: int = pydantic.Field(
        default=3,
        ge=-1,
        description=(
            "Worker failures Ray Train recovers from (restarting every worker from the latest checkpoint) before the "
            "training fails; -1: no limit."
        ),
    )
    python: str = pydantic.Field(
        default="python",
        description=(
            "The interpreter that runs the job on the cluster (it needs kto_pipeline with the ray extra installed)."
        ),
    )
    poll_interval_s: float = pydantic.Field(default=1.0, gt=0, description="How often the job's status is polled.")
    rayjob_manifest: str = pydantic.Field(
        default="",
        description=(
            "A KubeRay RayJob manifest (YAML file, e.g. deploy/kuberay/rayjob.yaml). "
            "Set: each training creates a RayJob "
            "(a Ray cluster of its own on Kubernetes, deleted when the job ends) through dagster-ray's "
            "PipesKubeRayJobClient instead of submitting to `address`; needs the kuberay extra and a kubeconfig."
        ),
    )

    def run(self, context: dg.AssetExecutionContext, extras: dict[str, Any], entrypoint: list[str]) -> Any:
        """Submit `entrypoint` as a Ray job with these extras; the Pipes session's completed invocation."""
        import shlex

        cluster = {
            "gpus_per_worker": self.gpus_per_worker,
            "cpus_per_worker": self.cpus_per_worker,
            "worker_resources": dict(self.worker_resources),
            "storage_path": self.storage_path,
            "max_failures": self.max_failures,
        }
        extras, submit = {**extras, "ray": cluster}, {"entrypoint": shlex.join(entrypoint)}
        if self.rayjob_manifest:
            return self._run_rayjob(context, extras, submit)
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ValueError(
                "ray_cluster.address is empty and RAY_ADDRESS is not set: training.launcher='ray' needs "
                "the Ray cluster's job-submission address (e.g. http://head:8265)"
            )
        try:
            from dagster_ray import PipesRayJobClient
        except ImportError:
            raise RuntimeError(RAY_EXTRA) from None
        client = PipesRayJobClient(address=address, poll_interval=self.poll_interval_s, message_reader=ray_job_reader())
        return client.run(context=context, extras=extras, submit_job_params=submit)

    def _run_rayjob(self, context: dg.AssetExecutionContext, extras: dict[str, Any], submit: dict[str, Any]) -> Any:
        """The KubeRay path (not exercised by the test suite: it needs a Kubernetes cluster with KubeRay)."""
        import yaml

        try:
            from dagster_ray.kuberay import PipesKubeRayJobClient
        except ImportError:
            raise RuntimeError(
                "ray_cluster.rayjob_manifest needs the kuberay extra: pip install 'kto_pipeline[kuberay]'"
            ) from None
        manifest = Path(self.rayjob_manifest)
        if not manifest.is_file():
            raise ValueError(f"ray_cluster.rayjob_manifest: no such file {manifest}")
        client = PipesKubeRayJobClient(poll_interval=self.poll_interval_s, message_reader=ray_job_reader())
        return client.run(
            context=context, submit_job_params=submit, ray_job=yaml.safe_load(manifest.read_text()), extras=extras
        )
