"""KTO training as its own process: `python -m kto_pipeline.training.run`, launched through Dagster Pipes.

The Dagster asset passes {config, dataset_dir, output_dir, cache_dir} as Pipes extras; this process
trains, streams its progress back as Pipes messages (kto_pipeline.progress) and log lines, writes the adapter +
metrics.json into output_dir and reports the materialization. Checkpoints live in output_dir/checkpoints, so
re-running a killed job resumes.

With training.num_processes > 1 the asset launches it through torchrun instead (`launch_command`). Every rank
inherits the DAGSTER_PIPES_* variables; only rank 0 opens Pipes (one message stream, one report) and writes
the outputs, the others read the same extras from the context and train silently. With training.launcher='ray'
the same `train` runs in Ray Train workers instead (ray_job.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kto_pipeline.artifacts import COMPLETE
from kto_pipeline.config import Config
from kto_pipeline.progress import Progress, StepLogged, TrainingBegan, to_message
from kto_pipeline.reports import TrainingMetrics
from kto_pipeline.training.long_rows import report_text


class NonFiniteLoss(RuntimeError):
    pass


OOM_ADVICE = """CUDA ran out of memory. Troubleshooting (as in the seed's README):
  - Reduce batch size:        kto train --model-size 7b --batch-size 2 --gradient-accumulation 16
  - Reduce sequence length:   kto train --model-size 7b --max-seq-length 1024
  - Enable gradient checkpointing (for 13B+): --lora-gradient-checkpointing (on in the 3b to 20b presets)
See what fits first: kto plan --model-size 7b --batch-size 2 (peak VRAM from the model config, no download)."""

NAN_ADVICE = (
    "Reduce the learning rate (--learning-rate 1e-7) or increase warmup "
    "(--training-warmup-ratio 0.2), as the seed's README suggests for NaN loss."
)


def _callback(log: Callable[[str | Progress], None], history: list[dict[str, Any]]):
    from transformers import TrainerCallback

    class StreamMetrics(TrainerCallback):
        """Send the progress to the caller; stop on a non-finite loss instead of training on garbage."""

        began: float = 0.0
        first_step: int = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # The total is known only here; the state is already the checkpoint's when it resumes.
            self.began, self.first_step = time.time(), state.global_step
            log(TrainingBegan(total_steps=state.max_steps, resumed_from_step=state.global_step))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = numeric(logs or {})
            if not logs:
                return
            history.append({"step": state.global_step, **logs})
            log(self.progress(state, logs))
            for key in ("loss", "eval_loss", "grad_norm"):
                if key in logs and not math.isfinite(logs[key]):
                    raise NonFiniteLoss(
                        f"{key} became {logs[key]} at step {state.global_step}: training stopped instead of "
                        f"training on garbage. {NAN_ADVICE}"
                    )

        def progress(self, state, logs: dict[str, Any]) -> StepLogged:
            step, total = state.global_step, state.max_steps
            elapsed = time.time() - self.began if self.began else 0.0
            done = step - self.first_step
            everything = {k: float(v) for k, v in logs.items()}
            if "loss" not in logs:  # eval and end-of-training logs carry other keys
                return StepLogged(step=step, total_steps=total, logs=everything)
            return StepLogged(
                step=step,
                total_steps=total,
                loss=logs["loss"],
                margin=logs.get("rewards/margins"),
                tokens_per_s=logs["num_tokens"] / elapsed if elapsed > 0 and "num_tokens" in logs else None,
                eta_s=elapsed / done * (total - step) if elapsed > 0 and done > 0 else None,
                logs=everything,
            )

    return StreamMetrics()


def numeric(logs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in logs.items() if isinstance(v, (int, float))}


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint: a run killed while writing one leaves a folder without trainer_state.json
    (the Trainer writes it last), which is skipped rather than resumed from."""
    if not ckpt_dir.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-")[-1]), p)
        for p in ckpt_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[-1].isdigit()
    )
    for _, path in reversed(steps):
        if (path / "trainer_state.json").is_file():
            return str(path)
    return None


def is_last_step(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's trainer state is the training's last step.

    transformers 5.17 resumed at max_steps still runs one more optimizer step before it checks the limit (seen:
    max_steps=8 resumed from checkpoint-8 trained step 9), which would change the weights of a finished training.
    """
    return bool(state.get("max_steps")) and state["global_step"] >= state["max_steps"]


def checkpoint_state(checkpoint: str | None) -> dict[str, Any]:
    """The Trainer's state saved with a checkpoint ({} for none): its step, max_steps and the logs up to it."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text()) if checkpoint else {}


def load_checkpoint_adapter(model: Any, checkpoint: str) -> None:
    """Put a checkpoint's LoRA weights into the trainer's PEFT model (the "default" adapter)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"{checkpoint}: adapter weights that fit no module of the model: {missing[:3]}")


def is_oom(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e)


def planner_advice(config: Config) -> str:
    """The memory planner's micro-batch for this run's config on this card (or the configured budget)."""
    import torch

    from kto_pipeline.training.memory import DEFAULT_BUDGET_GIB, pick_micro_batch

    t = config.training
    budget = (
        torch.cuda.get_device_properties(0).total_memory / 2**30
        if torch.cuda.is_available()
        else t.memory_budget_gib or DEFAULT_BUDGET_GIB
    )
    micro, accum = pick_micro_batch(config, budget)
    if micro >= t.per_device_train_batch_size:  # the plan said it fits: the rows or the card differ from the plan
        micro, accum = max(1, t.per_device_train_batch_size // 2), t.gradient_accumulation_steps * 2
        return (
            f"The planner expected micro-batch {t.per_device_train_batch_size} to fit {budget:.0f} GiB; halve "
            f"it: --batch-size {micro} --gradient-accumulation {accum} (same effective batch)."
        )
    return (
        f"The planner's pick for {budget:.0f} GiB at the same effective batch: --batch-size {micro} "
        f"--gradient-accumulation {accum} (or --memory-budget-gib {budget:.0f} picks it for you)."
    )


@contextlib.contextmanager
def oom_advice(config: Config | None = None) -> Iterator[None]:
    """Turn the one error users hit most into the seed's advice, with the planner's suggestion for this config;
    keep every other error as it is."""
    try:
        yield
    except Exception as e:
        if is_oom(e):
            advice = OOM_ADVICE
            if config is not None:
                try:
                    advice += "\n" + planner_advice(config)
                except Exception:  # noqa: BLE001 - an unknown architecture: the general advice still stands
                    pass
            raise RuntimeError(f"{advice}\n(original error: {str(e).splitlines()[0][:300]})") from e
        raise


def setup_reporting(config: Config, output_dir: Path) -> None:
    """TensorBoard always (event files under output_dir/tensorboard); W&B when asked."""
    import importlib.util

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")  # transformers 5 reads it here
    if config.training.wandb:
        if importlib.util.find_spec("wandb") is None:
            raise RuntimeError("--wandb needs the wandb package: pip install '.[wandb]'")
        os.environ["WANDB_PROJECT"] = config.training.wandb_project
        os.environ.setdefault("WANDB_DIR", str(output_dir))  # not the current directory


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launch_command(python: str, num_processes: int, launcher: str = "local") -> list[str]:
    """The training process, or torchrun with one process per GPU (on a CPU: gloo processes); for 'ray', the Ray
    job's driver (ray_job.py), which starts the Ray Train workers itself."""
    if num_processes < 1:
        raise ValueError(f"training.num_processes must be at least 1, not {num_processes}")
    if launcher == "ray":
        return [python, "-m", "kto_pipeline.training.ray_job"]
    if launcher == "local" and num_processes == 1:
        return [python, "-m", "kto_pipeline.training.run"]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "kto_pipeline.training.run",
    ]


def champion_eval(trainer: Any, champion: Path, base_model: str) -> dict[str, Any]:
    """Eval loss of the released adapter (`champion`) on this run's eval rows, with this run's reference: the
    bar the new adapter must clear (checks.eval_loss). Loaded beside the new adapter, evaluated, removed."""
    config = json.loads((champion / "adapter_config.json").read_text())
    if config.get("base_model_name_or_path") != base_model:
        return {
            "adapter": str(champion),
            "skipped": f"trained on {config.get('base_model_name_or_path')}, not {base_model}",
        }
    model = trainer.model
    model.load_adapter(str(champion), adapter_name="champion", is_trainable=False)
    model.set_adapter("champion")
    try:
        metrics = trainer.evaluate(metric_key_prefix="champion")
    finally:
        model.set_adapter("default")
        model.delete_adapter("champion")
    return {"adapter": str(champion), "eval_loss": metrics["champion_loss"]}


def train(
    config: Config,
    dataset_dir: Path,
    output_dir: Path,
    cache_dir: Path,
    log: Callable[[str | Progress], None] = print,
    champion: Path | None = None,
    *,
    ckpt_dir: Path | None = None,
    resume: str | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train a LoRA adapter on dataset_dir into output_dir; return the metrics (rank 0 writes metrics.json).

    champion: the adapter of the latest release, evaluated on the same eval rows after training.
    ckpt_dir: where the Trainer saves checkpoints (default output_dir/checkpoints); resume: the checkpoint to start
    from (default: the last complete one in ckpt_dir); callbacks: more Trainer callbacks. The Ray launcher sets all
    three: checkpoints in a folder of the worker's node, handed to Ray Train, and resumed from what Ray kept."""
    import torch

    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before any model lands on "the" GPU
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = ckpt_dir or output_dir / "checkpoints"
    setup_reporting(config, output_dir)
    started = time.time()
    history: list[dict[str, Any]] = []
    with oom_advice(config):  # loading, the reference pre-pass and training can each run out of memory
        loaded = load_for_training(config, cache_dir)
        trainer, info = build_trainer(config, loaded, dataset_dir, ckpt_dir, [_callback(log, history), *callbacks])
        account_long_rows(info, dataset_dir, output_dir, log)
        resume = resume or last_checkpoint(ckpt_dir)
        log(
            f"backend={loaded.backend} model={loaded.model_path} rows={info['train_rows']} "
            f"micro-batch={trainer.args.per_device_train_batch_size}x{trainer.args.gradient_accumulation_steps}"
            + (f" resuming from {resume}" if resume else "")
        )
        start_step, train_metrics = fit(trainer, resume, history, log)
    eval_metrics, champ = evaluate(trainer, info["eval_rows"], output_dir, champion, loaded.model_path)
    metrics = collect_metrics(
        loaded, trainer, info, history, train_metrics, eval_metrics, champ, resume, start_step, started
    )
    if rank() == 0:
        TrainingMetrics.of(metrics).write(output_dir)
        plot_metrics(history, output_dir / "training_curves.png")
    return metrics


def account_long_rows(info: dict[str, Any], dataset_dir: Path, output_dir: Path, log: Callable[[str], None]) -> None:
    """Log the long-row accounting; rank 0 lists the dropped rows next to the dataset and records where."""
    for line in report_text(info["long_rows"]).splitlines():
        log(line)
    dropped = info.pop("dropped_rows")
    if rank() == 0:
        info["long_rows"]["dropped_rows_file"] = str(write_dropped(dataset_dir, output_dir.name, dropped))


def fit(
    trainer: Any, resume: str | None, history: list[dict[str, Any]], log: Callable[[str], None]
) -> tuple[int, dict[str, Any]]:
    """Train from `resume` (or from the start): (the step it started at, the Trainer's train metrics)."""
    resumed = checkpoint_state(resume)  # read now: the Trainer's rotation may delete that checkpoint
    start_step = resumed.get("global_step", 0)
    # The logs of the steps before the checkpoint, so metrics.json and the loss plot describe the whole
    # training (a resume at the last step trains nothing and would otherwise report no loss at all).
    history.extend(numeric(h) for h in resumed.get("log_history", []))
    if is_last_step(resumed):  # killed after its last checkpoint: take those weights (Trainer would train on)
        load_checkpoint_adapter(trainer.model, resume)
        trainer.state.global_step = start_step
        log(f"{resume} is the last step ({start_step}): nothing left to train")
        return start_step, {}
    return start_step, trainer.train(resume_from_checkpoint=resume).metrics


def evaluate(
    trainer: Any, eval_rows: int, output_dir: Path, champion: Path | None, base_model: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Eval metrics of the trained adapter (saved into output_dir) and of the champion on the same rows."""
    eval_metrics = trainer.evaluate() if eval_rows else {}
    trainer.save_model(str(output_dir))  # PEFT adapter (safetensors) + tokenizer; rank 0 only
    champ = champion_eval(trainer, champion, base_model) if champion and eval_rows else None
    return eval_metrics, champ


def collect_metrics(
    loaded: Any,
    trainer: Any,
    info: dict[str, Any],
    history: list[dict[str, Any]],
    train_metrics: dict[str, Any],
    eval_metrics: dict[str, Any],
    champ: dict[str, Any] | None,
    resume: str | None,
    start_step: int,
    started: float,
) -> dict[str, Any]:
    """What metrics.json holds (kto_pipeline.reports.TrainingMetrics documents each key)."""
    finished = time.time()
    train_logs = [h for h in history if "loss" in h]
    last = train_logs[-1] if train_logs else {}
    # TRL counts tokens per process from 0: this process's are those logged after the resume point.
    tokens = max((h.get("num_tokens", 0) for h in history if h["step"] > start_step), default=0)
    runtime = train_metrics.get("train_runtime", finished - started)
    return {
        "backend": loaded.backend,
        "base_model": loaded.model_path,
        "resumed_from": resume,
        "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - start_step,
        "train_loss": train_metrics.get("train_loss"),
        "final_loss": last.get("loss"),
        "eval_loss": eval_metrics.get("eval_loss"),
        "rewards_chosen": last.get("rewards/chosen"),
        "rewards_rejected": last.get("rewards/rejected"),
        "rewards_margins": last.get("rewards/margins"),
        "kl": last.get("kl"),
        **kl_health(history),
        "eval": {k: v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        "champion": champ,
        "tokens": tokens,
        "micro_batch": trainer.args.per_device_train_batch_size,
        "gradient_accumulation": trainer.args.gradient_accumulation_steps,
        "precomputed_reference": bool(trainer.args.precompute_ref_log_probs),
        "peak_vram_gib": peak_vram_gib(),
        # this process's speed (None when it resumed at the last step and trained nothing)
        "tokens_per_s": tokens / runtime if runtime and tokens else None,
        "train_runtime_s": runtime,
        "wall_s": finished - started,
        "started_at": started,
        "finished_at": finished,
        **info,
        "history": history,
    }


def write_dropped(dataset_dir: Path, adapter_version: str, records: list[dict[str, Any]]) -> Path:
    """The ids of the rows this training left out, next to the dataset's quarantine (one file per adapter: which
    rows are too long depends on the model and max_seq_length). Written even when empty: none were dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("row_id", pa.string()),
            ("split", pa.string()),
            ("source", pa.string()),
            ("line", pa.int64()),
            ("tokens", pa.int64()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("reason", pa.string()),
        ]
    )
    path = dataset_dir / "dropped_at_training" / f"{adapter_version}.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def kl_health(history: list[dict[str, Any]]) -> dict[str, Any]:
    """How often TRL's KL estimate was 0 (it clamps a negative estimate to 0). The log of step 1 is left out: its
    forward passes all ran before the first update, while the policy still equals the reference, so it is 0 by
    construction."""
    kls = [h["kl"] for h in history if "kl" in h and "loss" in h and h["step"] > 1]
    zero = sum(k == 0 for k in kls)
    return {"kl_logged_steps": len(kls), "kl_zero_steps": zero, "kl_zero_share": zero / len(kls) if kls else None}


def peak_vram_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None


def plot_metrics(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and rewards against steps, for the asset page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, ax in (("loss", ax1), ("eval_loss", ax1), ("rewards/chosen", ax2), ("rewards/rejected", ax2), ("kl", ax2)):
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


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def rank_extras() -> dict[str, Any]:
    """The Pipes extras, read from the context rank 0 was given, without opening a second message stream."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as data:
        return data["extras"]


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    if rank() != 0:
        extras = rank_extras()
        train(
            Config.from_dict(extras["config"]),
            Path(extras["dataset_dir"]),
            Path(extras["output_dir"]),
            Path(extras["cache_dir"]),
            log=lambda line: None,
            champion=_path(extras.get("champion")),
        )
        return
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        config = Config.from_dict(extras["config"])
        output_dir = Path(extras["output_dir"])
        metrics = train(
            config,
            Path(extras["dataset_dir"]),
            output_dir,
            Path(extras["cache_dir"]),
            log=pipes_sink(pipes),
            champion=_path(extras.get("champion")),
        )
        (output_dir / COMPLETE).write_text("")
        report_materialization(pipes, metrics)


def pipes_sink(pipes: Any) -> Callable[[str | Progress], None]:
    """Where rank 0's output goes: log lines as Pipes log messages, progress as Pipes custom messages (which the
    lora_adapter asset turns into events of the run, kto_pipeline.progress)."""

    def send(item: str | Progress) -> None:
        if isinstance(item, str):
            pipes.log.info(item)
        else:
            pipes.report_custom_message(to_message(item))

    return send


def read_metrics(output_dir: Path) -> dict[str, Any]:
    return TrainingMetrics.read(output_dir).to_dict()


def report_materialization(pipes: Any, metrics: dict[str, Any]) -> None:
    """The numeric metrics as the materialization's metadata (the asset adds the rest from output_dir)."""
    pipes.report_asset_materialization(
        metadata={
            k: {"raw_value": v, "type": "float" if isinstance(v, float) else "int"}
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )


if __name__ == "__main__":
    main()
