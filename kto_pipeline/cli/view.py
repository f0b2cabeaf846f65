"""The live view of a `kto train` run: one line per finished asset with its figures, training progress, check
results; and what failed, gathered for the summary.

Fed with the run's EventLogEntry objects in order (kto_pipeline.cli.materialize). On an interactive terminal a
rich progress bar per running asset sits under the printed lines; elsewhere (CI, a pipe, TERM=dumb) only the
plain lines are printed, with no escape codes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.text import Text

from kto_pipeline.cli.failures import Failure, died_of_signal, root_message
from kto_pipeline.cli.figures import asset_line, duration, figures_of, gguf_lines
from kto_pipeline.progress import StepLogged, TrainingBegan, from_message, is_progress

# Training-step lines printed on top of the bar: about this many per run (plus the first and the last).
STEP_LINES = 10
WIDTH = 20  # asset names, as in the results table
INTERRUPTED = (
    "interrupted (Ctrl-C or SIGINT). Run the same kto train again: finished assets are reused and "
    "training resumes from its last checkpoint (training.save_steps)."
)


@dataclass
class Training:
    next_line: int = 0  # the step from which the next step line is printed


class RunView:
    """Turns a run's events into what a person reads, live; keeps the failures and warnings for the summary."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        """quiet: print nothing while the run goes (--verbose streams Dagster's own log instead)."""
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.live = self.console.is_interactive and not quiet
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.training = Training()
        self.planned: list[str] = []
        self.done: list[str] = []
        self.failures: list[Failure] = []
        self.warnings: list[str] = []
        self.failed_steps: set[str] = set()
        self.pipes_errors: dict[str, str] = {}
        self.run_failure: str | None = None

    def __enter__(self) -> RunView:
        if self.live:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    # -- output

    def say(self, asset: str, text: str, style: str = "") -> None:
        if self.quiet:
            return
        line = Text(f"{asset:<{WIDTH}} ", style="bold")
        line.append(text, style=style)
        self.console.print(line, soft_wrap=True)

    def _task(self, step: str, stats: str = "running", total: float | None = None, completed: float = 0) -> None:
        if self.progress is None:
            return
        if step not in self.tasks:
            self.tasks[step] = self.progress.add_task(step, total=None, stats="")
        self.progress.update(self.tasks[step], stats=stats, total=total, completed=completed)

    def _end_task(self, step: str) -> None:
        if self.progress is not None and step in self.tasks:
            self.progress.remove_task(self.tasks.pop(step))

    # -- events

    def on_event(self, entry) -> None:
        event = entry.dagster_event
        if event is None:
            # The assets' own log lines; not the checks' or Dagster's notes on skipped steps (the summary lists those).
            if (
                entry.step_key in self.planned
                and entry.level >= logging.INFO
                and not entry.user_message.startswith("Dependencies for step")
            ):
                self.on_message(entry.step_key, entry.user_message)
            return
        kind, data = event.event_type_value, event.event_specific_data
        if kind == "ASSET_MATERIALIZATION_PLANNED":
            self.planned.append(event.asset_key.to_user_string())
        elif kind == "STEP_START" and entry.step_key in self.planned:
            self._task(entry.step_key)
            if not self.live:
                self.say(entry.step_key, "running")
        elif kind == "ASSET_OBSERVATION" and is_progress(meta := data.asset_observation.metadata):
            self.on_progress(entry.step_key, from_message(meta))  # the training's progress (defs/progress.py)
        elif kind == "ASSET_MATERIALIZATION":
            self.on_materialization(event.asset_key.to_user_string(), figures_of(data.materialization.metadata))
        elif kind == "ASSET_CHECK_EVALUATION":
            self.on_check(entry.step_key, data)
        elif kind == "ENGINE_EVENT" and entry.user_message.startswith("[pipes]") and getattr(data, "error", None):
            self.pipes_errors[entry.step_key] = data.error.message.strip()  # the training process's own exception
        elif kind == "STEP_FAILURE":
            self.on_step_failure(entry.step_key, data)
        elif kind in ("PIPELINE_FAILURE", "PIPELINE_CANCELED"):
            self.run_failure = entry.user_message

    def on_message(self, step: str, message: str) -> None:
        if message.startswith("[pipes]"):
            return
        for line in message.splitlines():
            self.say(step, line)

    def on_progress(self, step: str, progress: TrainingBegan | StepLogged) -> None:
        if isinstance(progress, TrainingBegan):
            self.training = Training()
            self.say(step, progress.text())
            self._task(step, f"step 0/{progress.total_steps}", total=progress.total_steps)
        elif progress.loss is not None:  # a training step's (eval and end-of-training logs are for the UI)
            self.on_step(step, progress)

    def on_step(self, step: str, p: StepLogged) -> None:
        parts = [f"step {p.step}/{p.total_steps}", f"loss {p.loss:.4f}"]
        if p.margin is not None:
            parts.append(f"margin {p.margin:.3f}")
        if p.tokens_per_s is not None:
            parts.append(f"{p.tokens_per_s:,.0f} tok/s")
        if p.eta_s is not None:
            parts.append(f"ETA {duration(p.eta_s)}")
        stats = "  ".join(parts)
        self._task(step, stats, total=p.total_steps, completed=p.step)
        t = self.training
        if p.step >= t.next_line or p.step >= p.total_steps:  # now and then: the history stays on screen and in CI logs
            self.say(step, stats)
            t.next_line = p.step + max(1, math.ceil(p.total_steps / STEP_LINES))

    def on_materialization(self, asset: str, meta: dict[str, Any]) -> None:
        self._end_task(asset)
        self.done.append(asset)
        self.say(asset, asset_line(asset, meta), "green")
        if asset == "gguf_quantizations" and not self.quiet:
            for line in gguf_lines(meta):
                self.console.print(Text(line), soft_wrap=True)

    def on_check(self, step: str, evaluation) -> None:
        asset, name = evaluation.asset_key.to_user_string(), evaluation.check_name
        meta = figures_of(evaluation.metadata)
        if evaluation.passed:
            self.say(asset, f"check {name} passed", "green")
            return
        self.failed_steps.add(step)
        reason = evaluation.description or "failed"
        if evaluation.severity.value == "WARN":
            self.warnings.append(f"{name} on {asset}: {reason}")
            self.say(asset, f"check {name} WARNING (see Warnings at the end)", "yellow")
        else:
            self.failures.append(Failure(f"check {name} on {asset}", reason, meta))
            self.say(asset, f"check {name} FAILED", "red")

    def on_step_failure(self, step: str, data) -> None:
        self._end_task(step)
        error = data.error
        if step in self.failed_steps and error is not None and error.cls_name == "DagsterAssetCheckFailedError":
            return  # the check's evaluation already says why, with its numbers
        if data.user_failure_data is not None and data.user_failure_data.description:
            reason = data.user_failure_data.description  # a dg.Failure: the asset's own words
            figures = {k: v for k, v in figures_of(data.user_failure_data.metadata).items() if k != "files"}
        elif step in self.pipes_errors:
            reason, figures = self.pipes_errors[step], {}
        else:
            reason, figures = died_of_signal(step, error) or root_message(error), {}
        if reason.startswith("KeyboardInterrupt"):
            reason = INTERRUPTED
        self.failed_steps.add(step)
        self.failures.append(Failure(step, reason, figures))
        self.say(step, "FAILED", "red")

    def not_run(self) -> list[str]:
        failed = {f.title for f in self.failures}
        return [a for a in self.planned if a not in self.done and a not in failed]
