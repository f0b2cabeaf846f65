"""The whole asset graph, run for real: Dagster instance, Pipes subprocess, TRL training, merge."""

from __future__ import annotations

import json
import math
import time

import dagster as dg
import pytest

from kto_pipeline.config import PRESETS
from kto_pipeline_tests.conftest import run_ok

pytestmark = pytest.mark.slow  # every test here runs Dagster and trains

GRAPH = ["raw_preferences", "kto_dataset", "lora_adapter", "merged_model", "gguf_quantizations"]
CHECKS = {"kto_dataset": "label_balance", "lora_adapter": "eval_loss", "gguf_quantizations": "gguf_files_intact"}

TINY_STEPS = PRESETS["tiny"]["training"]["max_steps"]


def _check_results(instance, asset: str) -> dict[str, bool]:
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), CHECKS[asset]), limit=1
    )
    return {r.run_id: r.evaluation.passed for r in records if r.evaluation is not None}


def test_label_balance_failure_blocks_training(project):
    one_class = project.root / "only_yes.jsonl"
    one_class.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": True}) + "\n" for i in range(20))
    )
    proc = project.materialize_cli("*", {"ops": {"raw_preferences": {"config": {"local_file": str(one_class)}}}})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "outside [0.2, 0.8]" in out
    assert project.latest("kto_dataset")["n_undesirable"] == 0
    assert project.latest("lora_adapter") == {} and project.latest("merged_model") == {}


def test_rematerializing_skips_finished_training(project):
    run_ok(project.materialize_cli("raw_preferences,kto_dataset,lora_adapter"))
    first = project.latest("lora_adapter")
    metrics = project.artifacts / "lora_adapter" / first["data_version"] / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    out = run_ok(project.materialize_cli("lora_adapter"))
    assert "already trained for this data and config" in out
    assert metrics.stat().st_mtime_ns == stamp
    assert project.latest("lora_adapter")["eval_loss"] == first["eval_loss"]


def test_gpu_pool_runs_one_training_at_a_time(project):
    """Two runs started together, each with real training to do: the pool makes one wait."""
    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    procs = [
        project.materialize_cli("lora_adapter", {"ops": {"lora_adapter": {"config": {"training": {"seed": seed}}}}})
        for seed in (1, 2)
    ]
    for p in procs:
        run_ok(p)
    spans = sorted(
        (m["started_at"], m["finished_at"])
        for m in (json.loads(f.read_text()) for f in (project.artifacts / "lora_adapter").glob("*/metrics.json"))
    )
    assert len(spans) == 2
    (s1, e1), (s2, e2) = spans
    assert e1 <= s2, f"trainings overlapped: {spans}"


def test_dagster_cli_materializes_whole_graph(project):
    """`dagster asset materialize --select '*'` (what `kto train` runs): every asset, every check, real outputs;
    the merge is real: merged = base + a non-zero LoRA delta. The suite's one run of the whole graph."""
    import torch
    from safetensors.torch import load_file

    started = time.time()
    out = run_ok(project.materialize_cli("*"))
    assert "RUN_SUCCESS" in out
    for asset in GRAPH:
        meta = project.latest(asset)
        assert meta and meta["path"].startswith(str(project.artifacts)), asset
    data = project.latest("kto_dataset")
    assert data["valid"] == 66 and data["quarantined"] == 0
    assert data["records_in"] == data["valid"] + data["quarantined"] + data["duplicates_dropped"]
    adapter = project.latest("lora_adapter")
    assert adapter["steps"] == TINY_STEPS and math.isfinite(adapter["eval_loss"]) and adapter["tokens_per_s"] > 0
    assert adapter["wall_s"] < time.time() - started
    assert "data:image/png;base64," in adapter["training_curves"]
    adapter_dir = project.artifacts / "lora_adapter" / adapter["data_version"]
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size > 0
    assert list((adapter_dir / "tensorboard").glob("events.out.tfevents.*"))
    merged_meta = project.latest("merged_model")
    assert merged_meta["size_bytes"] > 0 and len(merged_meta["sha256"]) == 64
    gguf = project.latest("gguf_quantizations")
    files = [r.data for r in gguf["files"].records]
    assert [f["type"] for f in files] == ["F16", "Q4_K_M", "Q5_K_M", "Q8_0"] and all(f["passed"] for f in files)
    assert gguf["transformers_tokenization_match"] and gguf["chat_format"] == "chatml"
    assert "FROM ./model-Q4_K_M.gguf" in gguf["modelfile"]
    assert project.latest("hub_release")
    with project.instance() as instance:
        for asset in CHECKS:
            assert list(_check_results(instance, asset).values()) == [True], asset
        # The sample rows all fit the tiny preset's 256 tokens: trained on every one, and the accounting says so.
        assert adapter["train_rows_whole"] == adapter["train_rows"] == data["train_rows"]
        assert adapter["train_rows_dropped"] == adapter["eval_rows_dropped"] == adapter["train_rows_prompt_cut"] == 0
        assert [r.data["split"] for r in adapter["long_rows"].records] == ["train", "eval"]
        checks = {
            name: instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey("lora_adapter"), name)]
            )
            for name in ("long_rows", "kl_health")
        }
        evaluations = {name: next(iter(r.values())).evaluation for name, r in checks.items()}
        assert evaluations["long_rows"].passed
        assert 0 <= evaluations["kl_health"].metadata["kl_zero_share"].value <= 1
    merged = load_file(next((project.artifacts / "merged_model").glob("*/model.safetensors")))
    base = load_file(project.artifacts / "cache" / "tiny" / "model.safetensors")
    changed = [k for k in base if "proj" in k and not torch.equal(base[k], merged[k])]
    assert changed, "no projection changed: the adapter was not merged"
    assert all(torch.equal(base[k], merged[k]) for k in base if "norm" in k)  # LoRA leaves norms alone


def test_data_parallel_training_through_torchrun(project):
    """num_processes=2: torchrun starts two gloo ranks; only rank 0 talks Pipes. Each optimizer step sees the
    rows one process sees with twice the accumulation, so the first step's gradient is the same (and the tiny
    model both ranks build at once is the one a single process builds)."""
    import shutil

    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    shutil.rmtree(project.artifacts / "cache" / "tiny")  # both ranks then need the tiny model built: one builds it
    runs = {}
    for processes, accumulation in ((2, 2), (1, 2)):
        out = run_ok(
            project.materialize_cli(
                "lora_adapter",
                {
                    "ops": {
                        "lora_adapter": {
                            "config": {
                                "training": {
                                    "num_processes": processes,
                                    "max_steps": 6,
                                    "gradient_accumulation_steps": accumulation,
                                    "per_device_train_batch_size": 4,
                                }
                            }
                        }
                    }
                },
            )
        )  # 6 steps x 8 rows stay inside one epoch of the 53 rows
        assert out.count("backend=transformers") == 1, "more than one rank reported through Pipes"
        assert out.count("training 6 steps") == 1, "more than one rank sent its progress"
        meta = project.latest("lora_adapter")
        runs[processes] = json.loads(
            (project.artifacts / "lora_adapter" / meta["data_version"] / "metrics.json").read_text()
        )
        assert meta["processes"] == processes and meta["steps"] == 6
    one, two = runs[1], runs[2]
    assert (one["gradient_accumulation"], two["gradient_accumulation"]) == (2, 1)  # same effective batch
    steps = [[h for h in r["history"] if "loss" in h] for r in (one, two)]
    assert [h["num_tokens"] for h in steps[0]] == [h["num_tokens"] for h in steps[1]]
    assert math.isclose(steps[0][0]["grad_norm"], steps[1][0]["grad_norm"], rel_tol=1e-3)
    assert math.isfinite(two["eval_loss"])


def test_retrain_worse_than_the_release_is_blocked(project):
    """eval_loss compares a new adapter with the released one on the same eval rows, evaluated in the same run."""
    release = "raw_preferences,kto_dataset,lora_adapter,merged_model,hub_release"
    run_ok(project.materialize_cli(release))
    released = project.latest("lora_adapter")
    assert project.latest("hub_release")["lora_adapter"] == released["data_version"]
    # a retrain that barely moves from the base model: clearly worse than the released adapter
    untrained = {"ops": {"lora_adapter": {"config": {"training": {"learning_rate": 1e-9}}}}}
    proc = project.materialize_cli("lora_adapter,merged_model", untrained)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-3000:]
    with project.instance() as instance:
        key = dg.AssetCheckKey(dg.AssetKey("lora_adapter"), "eval_loss")
        evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation
    assert not evaluation.passed and "worse than the released adapter's" in evaluation.description
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    # the champion was re-evaluated on the same rows with the same reference: its own eval loss again
    assert math.isclose(meta["released_eval_loss"], released["eval_loss"], rel_tol=1e-4)
    assert meta["released_adapter"] == released["data_version"]
    assert meta["eval_loss"] > meta["released_eval_loss"] + 0.01
    assert project.latest("merged_model")["lora_adapter"] == released["data_version"]  # not re-merged
    # a looser gate lets the same adapter through (it is not retrained: the check alone runs again)
    loose = {**untrained, "resources": {"quality_gates": {"config": {"max_regression": 1.0}}}}
    out = run_ok(project.materialize_cli("lora_adapter", loose))
    assert "already trained for this data and config" in out
    with project.instance() as instance:
        again = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation
    assert again.passed and again.metadata["released_eval_loss"].value == meta["released_eval_loss"]
