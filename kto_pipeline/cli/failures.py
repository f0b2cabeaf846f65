"""A failed step or check in plain words: the asset's own description, a check's numbers and advice, the
training process's exception, or the signal that killed it; never Dagster's wrapper around it."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any

from kto_pipeline.cli.figures import scalars


@dataclass
class Failure:
    """One failed step or check, in plain words: what, why (with its numbers), and its figures."""

    title: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def lines(self, max_reason_lines: int = 25) -> list[str]:
        reason = self.reason.strip().splitlines() or ["(no description)"]
        if len(reason) > max_reason_lines:
            reason = [*reason[:max_reason_lines], "... (the rest is in the log)"]
        out = [f"FAILED: {self.title}", *(f"  {line}" for line in reason)]
        if self.figures:
            out.append(f"  figures: {scalars(self.figures)}")
        return out


def root_message(error) -> str:
    """The innermost cause of a Dagster error: the exception the asset raised, not Dagster's wrapper."""
    if error is None:
        return "failed (no error recorded)"
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def died_of_signal(step: str, error) -> str | None:
    """A Pipes process (training) killed by a signal reported no exception of its own: name the signal and what
    usually sends it."""
    chain = []
    while error is not None:
        chain.append(error.message)
        error = error.cause
    m = re.search(r"process failed with code (-\d+)", "\n".join(chain))
    if not m:
        return None
    try:
        name = signal.Signals(-int(m.group(1))).name
    except ValueError:
        name = f"signal {-int(m.group(1))}"
    why = {
        "SIGKILL": "most often the kernel's out-of-memory killer (host RAM, not GPU memory): lower "
        "--batch-size or --max-seq-length, or free memory",
        "SIGSEGV": "a crash in native code (torch, CUDA, bitsandbytes or unsloth kernels); the log holds the "
        "process's last lines",
        "SIGABRT": "a native library aborted (torch, CUDA, bitsandbytes); the log holds its message",
    }
    return f"the {step} process (python -m kto_pipeline.training.run) was killed by {name}: " + why.get(
        name, "see the log for its last lines"
    )
