#!/usr/bin/env bash
# Issue 13 on a GPU host, as a user runs it: the proof-of-learning benchmark on SmolLM2-135M-Instruct, and the
# whole graph through Dagster (`kto train`: the real CLI, Pipes, the gpu pool) with the smol preset and with a
# random-weight Llama-3.1-8B-shaped base. Two chains run side by side (the learning benchmark does not time
# anything; the two Dagster runs, which report tokens/s, queue on the GPU lock one after the other).
#
#   bash benchmarks/gpu_graph.sh OUT_DIR      # needs /tmp/site (.gpu/site.tgz), /tmp/smolpkg (the smol GGUF)
#                                             # and, for GGUF, llama-cpp-python built into /tmp/llama
# On the H200 of 2026-12-02 llama.cpp built there crashed (SIGSEGV in model load, native and generic x86-64
# builds alike), so the learning benchmark was run again without --gguf; logs in benchmarks/results/h200_issue13/.
set -uo pipefail
out=$(realpath -m "${1:-/tmp/gpu_out}")
mkdir -p "$out"
export PYTHONPATH=/tmp/site:/tmp/llama:/tmp/smolpkg:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export DAGSTER_HOME=$out/dagster_home KTO_ARTIFACT_ROOT=/dev/shm/kto_artifacts
kto() { python3 -m kto_pipeline.cli "$@"; }
gguf=$(python3 -c "import llama_cpp" 2>/dev/null && echo --gguf)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1

smol=/dev/shm/kto_artifacts/cache/smol  # built once, here, then shared by both chains
python3 -c "from kto_pipeline.training.smol import build_smol_model; build_smol_model('$smol')" > "$out/build_smol.log" 2>&1

( python3 benchmarks/learning.py experiment --base "$smol" --device cuda $gguf \
    --out "$out/learning" > "$out/learning.log" 2>&1; echo "exit $?" >> "$out/learning.log" ) &

(
  { time kto train --model-size smol --local-file data/learning/train.jsonl; } > "$out/dagster_smol.log" 2>&1
  echo "exit $?" >> "$out/dagster_smol.log"
  python3 benchmarks/train_bench.py build /dev/shm/llama8b > "$out/build_8b.log" 2>&1
  # GGUF verification needs a trained model (random weights give flat logits): everything else, release included
  { time kto train --model-size 7b --model-name /dev/shm/llama8b --local-file data/learning/train.jsonl \
      --max-steps 20 --batch-size 4 --gradient-accumulation 2 --max-seq-length 1024 \
      --select 'raw_preferences,kto_dataset,lora_adapter,merged_model,hub_release'; } \
    > "$out/dagster_8b.log" 2>&1
  echo "exit $?" >> "$out/dagster_8b.log"
) &
wait
