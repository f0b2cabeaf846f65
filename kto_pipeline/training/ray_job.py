"""KTO training as a Ray job: `python -m kto_pipeline.training.ray_job`, submitted by dagster-ray's PipesRayJobClient.

This process is the job's driver: its stdout is the job log that the Pipes client tails, so it is the one that
opens Dagster Pipes. It runs Ray Train's TorchTrainer with training.num_processes workers (gloo on CPUs, one GPU
each with ray_cluster.gpus_per_worker=1); every worker runs the same `run.train` as the local launcher, with the
accumulation divided among them (trainer.per_process reads WORLD_SIZE, which Ray Train sets). Rank 0's log lines
and progress (kto_pipeline.progress) travel to this driver through a Ray queue and leave as Pipes messages; rank 0
writes the adapter, metrics.json and the plot into output_dir (which every node must reach: the artifact root), and
this driver reports the materialization from metrics.json, exactly as run.main does.

Fault tolerance is Ray Train's: each worker's Trainer saves checkpoints to a folder of its own node, reports them
(ray.train.report), and Ray copies them to storage every node reaches; when a worker dies, Ray Train restarts the
whole group (FailureConfig.max_failures) and every worker resumes from ray.train.get_checkpoint(). A re-submitted
job with the same storage and run name resumes from the same checkpoints.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from kto_pipeline.config import Config

LOG_DONE = None  # what the driver puts on the log queue once fit() has returned


def checkpoint_callback():
    from transformers import TrainerCallback

    class ReportCheckpoint(TrainerCallback):
        """Hand each checkpoint the Trainer saved to Ray Train, which uploads it to the run's storage.

        Every rank reports its own folder under the same name and Ray merges them: rank 0's holds the adapter,
        optimizer and trainer state, each other rank's only its RNG state. What Ray's RayTrainReportCallback does,
        plus the wait for the commit below."""

        def on_save(self, args, state, control, **kwargs):
            import ray.train

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            ray.train.report(
                {"step": state.global_step},
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=folder.name,
            )
            # Train on only once Ray's controller has committed it: it collects reports when it polls the workers
            # (every 2 s), and a worker lost before that takes the uploaded checkpoint with it. Without this wait,
            # one run of the kill test lost 7 steps at save_steps=4 (the tiny model trains several steps in 2 s).
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

    return ReportCheckpoint()


def train_worker(job: dict[str, Any]) -> None:
    """One Ray Train worker: the local launcher's training, checkpointing through Ray."""
    import ray.train

    from kto_pipeline.training.run import rank, train

    queue = job["log_queue"]
    log = queue.put if rank() == 0 else (lambda line: None)
    # This node's checkpoint folder (Ray copies each one to storage). A fixed name per run and rank: when one worker
    # dies, Ray kills the others before their `finally` runs, and the restarted worker clears what they left.
    local = Path(tempfile.gettempdir()) / f"kto-ray-checkpoints-{job['version']}-rank{rank()}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    checkpoint = ray.train.get_checkpoint()  # the latest one reported, after a restart or a resubmitted job
    try:
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume:
            train(
                Config.from_dict(job["config"]),
                Path(job["dataset_dir"]),
                Path(job["output_dir"]),
                Path(job["cache_dir"]),
                log=log,
                champion=Path(job["champion"]) if job.get("champion") else None,
                ckpt_dir=local,
                resume=resume,
                callbacks=[checkpoint_callback()],
            )
    finally:
        shutil.rmtree(local, ignore_errors=True)


def run_config(cluster: dict[str, Any], output_dir: Path, version: str):
    """Where Ray keeps the checkpoints: by default the adapter's own scratch folder (under the artifact root, like
    the local launcher's output_dir/checkpoints); else {storage_path}/lora_adapter-{version}. The same name is
    the same run, which is how a resubmitted job finds its checkpoints."""
    import ray.train

    storage, name = (
        (cluster["storage_path"], f"lora_adapter-{version}")
        if cluster.get("storage_path")
        else (str(output_dir), "checkpoints")
    )
    return ray.train.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=ray.train.FailureConfig(max_failures=cluster["max_failures"]),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),  # as the Trainer's save_total_limit
        # Ray Train's print patch logs what libraries print into a redirected stdout too: dill's disassembly, which
        # datasets captures while hashing TRL's map functions, came out as ~1,000 lines of bytecode per worker.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )


def fit(extras: dict[str, Any], log) -> None:
    """Run the TorchTrainer, forwarding rank 0's log lines and progress to `log` while it trains."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    cluster = extras["ray"]
    config = Config.from_dict(extras["config"])
    ray.init(address="auto", log_to_driver=True)
    queue = Queue(actor_options={"num_cpus": 0})  # lives as long as this driver, across worker restarts
    gpus = cluster["gpus_per_worker"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={**extras, "log_queue": queue},
        scaling_config=ScalingConfig(
            num_workers=config.training.num_processes,
            use_gpu=gpus > 0,
            resources_per_worker={
                "CPU": cluster["cpus_per_worker"],
                **({"GPU": gpus} if gpus else {}),
                **cluster["worker_resources"],
            },
        ),
        run_config=run_config(cluster, Path(extras["output_dir"]), extras["version"]),
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread below
            failure.append(e)
        finally:
            queue.put(LOG_DONE)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (line := queue.get()) is not LOG_DONE:
        log(line)
    thread.join()
    if failure:
        raise failure[0]


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    from kto_pipeline.artifacts import COMPLETE
    from kto_pipeline.training.run import pipes_sink, read_metrics, report_materialization

    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        fit(extras, pipes_sink(pipes))
        output_dir = Path(extras["output_dir"])
        metrics = read_metrics(output_dir)  # rank 0 wrote it, on storage this driver reaches too
        (output_dir / COMPLETE).write_text("")
        report_materialization(pipes, metrics)


if __name__ == "__main__":
    main()
