"""KTO training as its own process: `python -m kto_pipeline.training.run`, launched through Dagster Pipes.

The Dagster asset passes {config, dataset_dir, output_dir, cache_dir} as Pipes extras; this process
trains, streams metrics back as log lines, writes the adapter + metrics.json into output_dir and reports
the materialization. Checkpoints live in output_dir/checkpoints, so re-running a killed job resumes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from kto_pipeline.artifacts import COMPLETE
from kto_pipeline.config import Config


class NonFiniteLoss(RuntimeError):
    pass


OOM_ADVICE = (
    "CUDA ran out of memory. Try, in this order: a smaller micro-batch with more accumulation "
    "(--batch-size 2 --gradient-accumulation 16), a shorter --max-seq-length (e.g. 1024), gradient "
    "checkpointing on (lora.gradient_checkpointing), 4-bit loading (model.load_in_4bit), or a smaller preset."
)


def _callback(log: Callable[[str], None], history: list[dict[str, Any]]):
    from transformers import TrainerCallback

    class StreamMetrics(TrainerCallback):
        """Send each log line to the caller; stop on a non-finite loss instead of training on garbage."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if not logs:
                return
            history.append({"step": state.global_step, **logs})
            log(f"step {state.global_step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items())))
            for key in ("loss", "eval_loss"):
                if key in logs and not math.isfinite(logs[key]):
                    raise NonFiniteLoss(
                        f"{key} became {logs[key]} at step {state.global_step}: training stopped. "
                        "Lower the learning rate (--learning-rate) or raise warmup (training.warmup_ratio).")

    return StreamMetrics()


def last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def train(config: Config, dataset_dir: Path, output_dir: Path, cache_dir: Path,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a LoRA adapter on dataset_dir into output_dir; return the metrics written to metrics.json."""
    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = output_dir / "checkpoints"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")  # transformers 5 reads it here
    started = time.time()
    loaded = load_for_training(config, cache_dir)
    history: list[dict[str, Any]] = []
    trainer, info = build_trainer(config, loaded, dataset_dir, ckpt_dir, [_callback(log, history)])
    resume = last_checkpoint(ckpt_dir)
    log(f"backend={loaded.backend} model={loaded.model_path} rows={info['train_rows']}"
        + (f" resuming from {resume}" if resume else ""))
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except Exception as e:  # turn the one error users hit most into advice, keep the rest as they are
        if type(e).__name__ == "OutOfMemoryError":
            raise RuntimeError(OOM_ADVICE) from e
        raise
    eval_metrics = trainer.evaluate() if info["eval_rows"] else {}
    trainer.save_model(str(output_dir))  # PEFT adapter (safetensors) + tokenizer
    finished = time.time()
    train_logs = [h for h in history if "loss" in h]
    last = train_logs[-1] if train_logs else {}
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    runtime = result.metrics.get("train_runtime", finished - started)
    metrics = {
        "backend": loaded.backend,
        "base_model": loaded.model_path,
        "resumed_from": resume,
        "steps": trainer.state.global_step,
        "train_loss": result.metrics.get("train_loss"),
        "final_loss": last.get("loss"),
        "eval_loss": eval_metrics.get("eval_loss"),
        "rewards_chosen": last.get("rewards/chosen"),
        "rewards_rejected": last.get("rewards/rejected"),
        "rewards_margins": last.get("rewards/margins"),
        "kl": last.get("kl"),
        "eval": {k: v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        "tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime else None,
        "train_runtime_s": runtime,
        "wall_s": finished - started,
        "started_at": started,
        "finished_at": finished,
        **info,
        "history": history,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    plot_metrics(history, output_dir / "training_curves.png")
    return metrics


def plot_metrics(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and rewards against steps, for the asset page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, ax in (("loss", ax1), ("eval_loss", ax1), ("rewards/chosen", ax2), ("rewards/rejected", ax2),
                    ("kl", ax2)):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
    for ax, title in ((ax1, "KTO loss"), (ax2, "rewards and KL")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        config = Config.from_dict(extras["config"])
        output_dir = Path(extras["output_dir"])
        metrics = train(config, Path(extras["dataset_dir"]), output_dir, Path(extras["cache_dir"]),
                        log=pipes.log.info)
        (output_dir / COMPLETE).write_text("")
        pipes.report_asset_materialization(metadata={
            k: {"raw_value": v, "type": "float" if isinstance(v, float) else "int"}
            for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        })


if __name__ == "__main__":
    main()
