"""The live view of a `kto train` run: one line per finished asset with its figures, training progress, check
results; and what failed, gathered for the summary.

Fed with the run's EventLogEntry objects in order (kto_pipeline.cli.materialize). On an interactive terminal a
rich progress bar per running asset sits under the printed lines; elsewhere (CI, a pipe, TERM=dumb) only the
plain lines are printed, with no escape codes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.text import Text

from kto_pipeline.cli.failures import Failure, died_of_signal, root_message
from kto_pipeline.cli.figures import asset_line, duration, figures_of, gguf_lines

# Log lines of the training process (kto_pipeline.training.run): the total at train begin, then one per logged step.
TRAINING_BEGIN = re.compile(r"^training (\d+) steps")
STEP = re.compile(r"^step (\d+): (.*)$")
RESUME = re.compile(r"resuming from \S*checkpoint-(\d+)")
# Training-step lines printed on top of the bar: about this many per run (plus the first and the last).
STEP_LINES = 10
WIDTH = 20  # asset names, as in the results table
INTERRUPTED = (
    "interrupted (Ctrl-C or SIGINT). Run the same kto train again: finished assets are reused and "
    "training resumes from its last checkpoint (training.save_steps)."
)


@dataclass
class Training:
    total: int | None = None
    begin: float | None = None
    first_step: int = 0
    next_line: int = 0


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
                self.on_message(entry.step_key, entry.user_message, entry.timestamp)
            return
        kind, data = event.event_type_value, event.event_specific_data
        if kind == "ASSET_MATERIALIZATION_PLANNED":
            self.planned.append(event.asset_key.to_user_string())
        elif kind == "STEP_START" and entry.step_key in self.planned:
            self._task(entry.step_key)
            if not self.live:
                self.say(entry.step_key, "running")
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

    def on_message(self, step: str, message: str, at: float) -> None:
        if message.startswith("[pipes]"):
            return
        if m := TRAINING_BEGIN.match(message):
            self.training.total, self.training.begin = int(m.group(1)), at
            self.say(step, message)
            self._task(step, f"step 0/{self.training.total}", total=self.training.total)
            return
        if m := STEP.match(message):
            metrics = dict(kv.split("=", 1) for kv in m.group(2).split(", ") if "=" in kv)
            if "loss" in metrics:  # a training step (eval and end-of-training logs carry other keys)
                self.on_step(step, int(m.group(1)), metrics, at)
            return
        if m := RESUME.search(message):
            self.training.first_step = int(m.group(1))
        for line in message.splitlines():
            self.say(step, line)

    def on_step(self, step: str, n: int, metrics: dict[str, str], at: float) -> None:
        t = self.training
        total = t.total or n
        parts = [f"step {n}/{total}", f"loss {float(metrics['loss']):.4f}"]
        if "rewards/margins" in metrics:
            parts.append(f"margin {float(metrics['rewards/margins']):.3f}")
        elapsed = at - t.begin if t.begin else 0.0
        if elapsed > 0 and "num_tokens" in metrics:
            parts.append(f"{float(metrics['num_tokens']) / elapsed:,.0f} tok/s")
        done = n - t.first_step
        if elapsed > 0 and done > 0:
            parts.append(f"ETA {duration(elapsed / done * (total - n))}")
        stats = "  ".join(parts)
        self._task(step, stats, total=total, completed=n)
        if n >= t.next_line or n >= total:  # a line now and then, so the history stays on screen and in CI logs
            self.say(step, stats)
            t.next_line = n + max(1, math.ceil(total / STEP_LINES))

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
