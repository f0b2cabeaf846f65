"""kto_pipeline.training.run on the tiny model (CPU): resume after a kill, NaN stop, OOM advice, reporting."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kto_pipeline.config import Config, get_config
from kto_pipeline.progress import StepLogged, TrainingBegan
from kto_pipeline.training.run import NonFiniteLoss, last_checkpoint, train

pytestmark = pytest.mark.slow  # real training runs, some in subprocesses

REPO = Path(__file__).resolve().parent.parent
TRAIN = """import json, sys
from pathlib import Path
from kto_pipeline.config import Config
from kto_pipeline.training.run import train
train(Config.from_dict(json.loads(sys.argv[1])), *map(Path, sys.argv[2:5]))
"""


def tiny(**training) -> Config:
    return get_config("tiny", {"training": training})


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, kto_data, cache):
    out = tmp_path / "adapter"
    config = tiny(max_steps=8, save_steps=2)
    cmd = [sys.executable, "-c", TRAIN, json.dumps(config.to_dict()), str(kto_data), str(out), str(cache)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_checkpoint(out / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    killed_at = last_checkpoint(out / "checkpoints")
    assert killed_at is not None, "no checkpoint was written before the deadline"
    step = int(killed_at.rsplit("-", 1)[1])
    assert step < 8 and not (out / "metrics.json").exists(), "the first run was not stopped mid-way"
    # a half-written newer checkpoint (killed while saving) must be skipped, not resumed from
    (out / "checkpoints" / f"checkpoint-{step + 1}").mkdir()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] == killed_at
    assert m["steps"] == 8 and m["steps_this_run"] == 8 - step  # continued, did not start over
    trained = [h["step"] for h in m["history"] if "loss" in h]
    assert trained == sorted(set(trained)) and min(trained) == 1 and max(trained) == 8  # the whole training's logs
    assert m["tokens_per_s"] and m["final_loss"] is not None
    assert (out / "adapter_model.safetensors").is_file()

    # Killed after the last checkpoint, before metrics.json: the re-run resumes at step 8 and trains nothing; its
    # metrics still describe the training (not empty losses and tokens_per_s 0).
    from safetensors.torch import load_file

    trained_weights = load_file(out / "adapter_model.safetensors")
    (out / "metrics.json").unlink()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = load_file(out / "adapter_model.safetensors")
    assert reloaded.keys() == trained_weights.keys()
    assert all(reloaded[k].equal(trained_weights[k]) for k in reloaded)  # not one step past max_steps
    again = json.loads((out / "metrics.json").read_text())
    assert again["resumed_from"].endswith("checkpoint-8") and again["steps"] == 8 and again["steps_this_run"] == 0
    assert again["final_loss"] == m["final_loss"] and again["tokens_per_s"] is None
    assert [h for h in again["history"] if "loss" in h] == [h for h in m["history"] if "loss" in h]


def test_non_finite_loss_stops_with_advice(tmp_path, kto_data, cache, monkeypatch):
    from trl import KTOTrainer

    compute_loss = KTOTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):  # an inf from step 2 on, as a diverging run gives
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("inf") if self.state.global_step >= 1 else loss

    monkeypatch.setattr(KTOTrainer, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss became (inf|nan) at step 2.*--learning-rate 1e-7.*warmup"):
        train(tiny(max_steps=4), kto_data, tmp_path / "out", cache, log=lambda s: None)


def test_cuda_oom_gives_the_seeds_advice(tmp_path, kto_data, cache, monkeypatch):
    import torch
    from trl import KTOTrainer

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(KTOTrainer, "train", oom)
    with pytest.raises(RuntimeError) as err:
        train(tiny(max_steps=2), kto_data, tmp_path / "out", cache, log=lambda s: None)
    text = str(err.value)
    assert "--batch-size 2 --gradient-accumulation 16" in text and "--max-seq-length 1024" in text
    assert "kto plan" in text and "Tried to allocate 2.00 GiB" in text
    assert re.search(r"The planner('s pick| expected).* --batch-size \d+ --gradient-accumulation \d+", text), text


def test_metrics_plot_and_tensorboard(tmp_path, kto_data, cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    sent: list = []
    m = train(tiny(max_steps=3), kto_data, out, cache, log=sent.append)
    assert m["steps"] == 3 and m["micro_batch"] == 8 and m["backend"] == "transformers"
    assert all(isinstance(m[k], float) for k in ("final_loss", "eval_loss", "kl", "tokens_per_s"))
    # streamed as it trains: the total first, then one message per logged step, with its figures
    assert [p for p in sent if isinstance(p, TrainingBegan)] == [TrainingBegan(total_steps=3, resumed_from_step=0)]
    steps = [p for p in sent if isinstance(p, StepLogged) and p.loss is not None]
    assert [(p.step, p.total_steps) for p in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(p.tokens_per_s > 0 and p.eta_s >= 0 and p.logs["loss"] == p.loss for p in steps)
    assert steps[-1].eta_s == 0 and steps[-1].loss == m["final_loss"]
    assert any(isinstance(p, StepLogged) and p.loss is None and "eval_loss" in p.logs for p in sent)
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == m["eval_loss"]
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 3  # TensorBoard always, W&B or not
    assert not (out / "wandb").exists()


def test_wandb_offline(tmp_path, kto_data, cache, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "restored-after-the-test")  # train() sets it from the config
    out = tmp_path / "out"
    train(
        tiny(max_steps=2, wandb=True, wandb_project="kto-test", wandb_run_name="tiny-offline"),
        kto_data,
        out,
        cache,
        log=lambda s: None,
    )
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), "no offline W&B run was written"
    assert os.environ["WANDB_PROJECT"] == "kto-test"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_precomputed_reference_equals_the_in_step_reference(tmp_path, kto_data, cache):
    """The precompute pass runs with TRL's "ref" adapter dropped (adapters disabled): its log-probs must be
    exactly what the reference scores inside a training step, so the first step's loss is the same."""
    import torch

    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    def first_batch(precompute: bool):
        loaded = load_for_training(tiny(precompute_ref_log_probs=precompute), cache)
        trainer, _ = build_trainer(
            tiny(precompute_ref_log_probs=precompute), loaded, kto_data, tmp_path / str(precompute), []
        )
        assert "ref" not in trainer.model.peft_config  # scored through disabled adapters, not a LoRA copy
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
        return trainer, batch, loss, {k: v[-1] for k, v in trainer._metrics["train"].items() if v}

    pre, batch, loss_pre, m_pre = first_batch(True)
    _, _, loss_step, m_step = first_batch(False)
    assert "ref_logps" in batch and "ref_KL_logps" in batch
    ref, ref_kl = pre.compute_ref_log_probs(pre.model, {k: v for k, v in batch.items()})
    assert torch.allclose(batch["ref_logps"], ref.cpu(), rtol=1e-5, atol=1e-4)
    assert torch.allclose(batch["ref_KL_logps"], ref_kl.cpu(), rtol=1e-5, atol=1e-4)
    assert torch.allclose(loss_pre, loss_step, atol=1e-6)
    assert m_pre["kl"] == pytest.approx(m_step["kl"], abs=1e-5)
