"""Training progress, the one message the training process sends while it trains (no Dagster in this module).

The training process sends each message as a Dagster Pipes custom message (`to_message`); the lora_adapter asset
turns each into an AssetObservation of lora_adapter with the message as its metadata (defs/progress.py), written
to the run's event log as it arrives; `kto train` reads them back with `from_message` (cli/view.py). A field
added here is sent, stored and readable with no other change to the two ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA = "kto_pipeline.progress"
VERSION = 1


@dataclass(frozen=True)
class TrainingBegan:
    """Sent once, when the Trainer starts its loop (not when a resume at the last step leaves nothing to train)."""

    KIND: ClassVar[str] = "training_began"

    total_steps: int
    """Optimizer steps the training runs to (the Trainer's max_steps)."""
    resumed_from_step: int = 0
    """The step of the checkpoint it resumes from; 0 for a fresh start."""

    def text(self) -> str:
        return f"training {self.total_steps} steps"


@dataclass(frozen=True)
class StepLogged:
    """Sent for each log of the Trainer (every training.logging_steps, and the eval and end-of-training logs)."""

    KIND: ClassVar[str] = "step_logged"

    step: int
    """The optimizer step the log belongs to."""
    total_steps: int
    """As in TrainingBegan, so each message reads on its own."""
    loss: float | None = None
    """The training KTO loss; None for a log that is not a training step's (eval, end of training)."""
    margin: float | None = None
    """TRL's rewards/margins at this step."""
    tokens_per_s: float | None = None
    """This process's tokens (TRL's num_tokens) per second since the training loop began."""
    eta_s: float | None = None
    """Seconds left at the speed of the steps trained so far in this process."""
    logs: dict[str, float] = field(default_factory=dict)
    """Every number the Trainer logged at this step under its own key (grad_norm, kl, ...), for people reading the
    run in the UI; readers of the fields above do not look in here."""

    def text(self) -> str:
        return f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.logs.items()))


Progress = TrainingBegan | StepLogged
KINDS: dict[str, type[TrainingBegan] | type[StepLogged]] = {c.KIND: c for c in (TrainingBegan, StepLogged)}


def to_message(progress: Progress) -> dict[str, Any]:
    """The Pipes custom message payload (plain JSON), and the observation's metadata (Dagster types the values)."""
    return {"schema": SCHEMA, "version": VERSION, "kind": progress.KIND, **dataclasses.asdict(progress)}


def is_progress(payload: Any) -> bool:
    """Whether a Pipes custom message or an observation's metadata is one of ours (of any version)."""
    return isinstance(payload, Mapping) and _value(payload.get("schema")) == SCHEMA


def from_message(payload: Mapping[str, Any]) -> Progress:
    """A message (or metadata, whose values may be Dagster MetadataValues) back as its dataclass.

    A message of another version fails with both versions named, never with a KeyError."""
    values = {k: _value(v) for k, v in payload.items()}
    if values.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} message: schema={values.get('schema')!r}")
    if values.get("version") != VERSION:
        raise ValueError(
            f"{SCHEMA} message of version {values.get('version')}; this kto_pipeline reads version {VERSION} "
            "(the training process and the reader come from different kto_pipeline installs)"
        )
    cls = KINDS.get(values.get("kind"))
    if cls is None:
        raise ValueError(f"{SCHEMA} message of unknown kind {values.get('kind')!r}: expected one of {sorted(KINDS)}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values and _required(cls, n)]
    if missing:
        raise ValueError(f"{SCHEMA} {cls.KIND} message without {', '.join(missing)}")
    return cls(**{n: values[n] for n in names if n in values})


def _value(v: Any) -> Any:
    """A Dagster MetadataValue's value (duck-typed: this module imports no Dagster); a plain value as it is."""
    return v.value if hasattr(v, "value") and not isinstance(v, (int, float, str, dict, list)) else v


def _required(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
