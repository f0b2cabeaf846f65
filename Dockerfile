# The image of every Ray node (head and workers) when lora_adapter trains with training.launcher=ray on KubeRay
# (deploy/kuberay/): Ray's own GPU image, with this project and its gpu and ray extras on top.
#   docker build -t registry.example.com/kto-pipeline:0.1.0 .
# Not built or run in this repository's CI (no Docker, no GPU there): see "Past one machine: Ray" in docs/training.md.
FROM rayproject/ray:2.60.0-py311-gpu

# llama-cpp-python (part of the base install) compiles llama.cpp from source.
USER root
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
USER ray

WORKDIR /home/ray/kto_pipeline
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users kto_pipeline ./kto_pipeline
# ray[default,train]==2.60.0 is what the base image ships: pip keeps it. torch==2.13.0 from PyPI is its CUDA build.
RUN pip install --no-cache-dir '.[gpu,ray]'

# Every node reads and writes the artifact root (the adapter, checkpoints, the built base models) at one path:
# mount the same ReadWriteMany volume here on every Ray pod and on the Dagster pods.
ENV KTO_ARTIFACT_ROOT=/artifacts
