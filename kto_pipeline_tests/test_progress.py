"""The training's progress messages: the schema both ends import, their way through Dagster Pipes into the run's
event log while the process still runs, and `kto train`'s live view rendered from those events."""

import json
import math
import sys
import threading
import time

import dagster as dg
import pytest
from rich.console import Console

from kto_pipeline import progress
from kto_pipeline.cli.view import RunView
from kto_pipeline.defs.progress import ProgressTempFileReader
from kto_pipeline.progress import StepLogged, TrainingBegan

STEP = StepLogged(
    step=3,
    total_steps=8,
    loss=0.6931,
    margin=0.125,
    tokens_per_s=1234.5,
    eta_s=65.0,
    logs={"loss": 0.6931, "rewards/margins": 0.125, "grad_norm": 1.5},
)


def test_messages_round_trip_as_json():
    for message in (TrainingBegan(total_steps=8, resumed_from_step=4), STEP, StepLogged(step=8, total_steps=8)):
        payload = json.loads(json.dumps(progress.to_message(message)))
        assert payload["schema"] == progress.SCHEMA and payload["version"] == progress.VERSION
        assert progress.is_progress(payload) and progress.from_message(payload) == message
    assert STEP.text() == "step 3: grad_norm=1.5, loss=0.6931, rewards/margins=0.125"
    assert TrainingBegan(total_steps=8).text() == "training 8 steps"
    assert not progress.is_progress({"schema": "someone.else"}) and not progress.is_progress("step 3")


def test_messages_round_trip_as_observation_metadata():
    """Dagster types the values (int, float, null, json); a NaN loss (the run is about to stop on it) survives."""
    nan = StepLogged(step=2, total_steps=8, loss=math.nan, logs={"loss": math.nan})
    for message in (STEP, StepLogged(step=8, total_steps=8, logs={"eval_loss": 0.5}), nan):
        observation = dg.AssetObservation(asset_key="lora_adapter", metadata=progress.to_message(message))
        assert not any(isinstance(v, (int, float, str, dict)) for v in observation.metadata.values())  # typed
        back = progress.from_message(observation.metadata)
        assert back == message or (math.isnan(back.loss) and back.step == 2)


def test_a_message_of_another_version_or_shape_fails_clearly():
    payload = progress.to_message(STEP)
    with pytest.raises(ValueError, match=r"version 2; this kto_pipeline reads version 1"):
        progress.from_message({**payload, "version": 2})
    with pytest.raises(ValueError, match=r"unknown kind 'epoch_done'"):
        progress.from_message({**payload, "kind": "epoch_done"})
    with pytest.raises(ValueError, match=r"step_logged message without total_steps"):
        progress.from_message({k: v for k, v in payload.items() if k != "total_steps"})


# The external process: sends its progress, then waits until the test has seen the first message in the event
# log (a file appears). If the messages reached the event log only after the process ended, it would time out.
SCRIPT = """
import json, os, sys, time
from dagster_pipes import open_dagster_pipes
messages = json.loads(sys.argv[1])
with open_dagster_pipes() as pipes:
    pipes.report_custom_message(messages[0])
    pipes.log.info("a line of the training's own")
    deadline = time.time() + 60
    while not os.path.exists(sys.argv[2]):
        assert time.time() < deadline, "the first progress message never reached the event log"
        time.sleep(0.1)
    for message in messages[1:]:
        pipes.report_custom_message(message)
    pipes.report_custom_message({"not": "progress"})
    pipes.report_asset_materialization(metadata={"steps": 8})
"""


def test_progress_reaches_the_event_log_while_the_process_runs_and_the_view_renders_it(tmp_path):
    seen = tmp_path / "seen"
    messages = [TrainingBegan(total_steps=8)] + [
        StepLogged(step=n, total_steps=8, loss=1 / n, margin=0.1 * n, tokens_per_s=1000.0 * n, eta_s=8.0 - n)
        for n in range(1, 9)
    ]
    messages.append(StepLogged(step=8, total_steps=8, logs={"eval_loss": 0.25}))  # eval: not a training step

    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        payloads = json.dumps([progress.to_message(m) for m in messages])
        invocation = client.run(command=[sys.executable, "-c", SCRIPT, payloads, str(seen)], context=context)
        assert [m for m in invocation.get_custom_messages()] == [{"not": "progress"}]  # others pass through
        return invocation.get_materialize_result()

    with dg.instance_for_test() as instance:

        def watch() -> None:
            deadline = time.time() + 60
            while not instance.fetch_observations(dg.AssetKey("lora_adapter"), limit=1).records:
                if time.time() > deadline:
                    return
                time.sleep(0.1)
            seen.write_text("")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        client = dg.PipesSubprocessClient(message_reader=ProgressTempFileReader())
        result = dg.materialize([lora_adapter], instance=instance, resources={"client": client})
        watcher.join()
        assert result.success
        records = instance.get_records_for_run(result.run_id, limit=1000).records
        observed = dg.DagsterEventType.ASSET_OBSERVATION
        observations = [r for r in records if r.event_log_entry.dagster_event_type == observed]
        assert len(observations) == len(messages)
        first = observations[0].event_log_entry.dagster_event.event_specific_data.asset_observation
        assert first.description == "training 8 steps" and first.metadata["total_steps"].value == 8

        console = Console(record=True, width=200, force_terminal=False, force_interactive=False)
        with RunView(console) as view:
            view.planned.append("lora_adapter")
            for record in records:
                view.on_event(record.event_log_entry)
    out = console.export_text()
    lines = [line.rstrip() for line in out.splitlines() if line.startswith("lora_adapter ")]
    assert lines[:3] == [
        "lora_adapter         running",  # no terminal: plain lines, no bar
        "lora_adapter         training 8 steps",
        "lora_adapter         a line of the training's own",
    ]
    steps = [line for line in lines if " step " in line]
    assert steps[0] == "lora_adapter         step 1/8  loss 1.0000  margin 0.100  1,000 tok/s  ETA 0:00:07"
    assert steps[-1] == "lora_adapter         step 8/8  loss 0.1250  margin 0.800  8,000 tok/s  ETA 0:00:00"
    assert len(steps) == 8  # ceil(8 / STEP_LINES) = 1: every step gets its line here; the eval log none
    assert "eval_loss" not in out and "[pipes]" not in out
