"""The training's progress messages (kto_pipeline.progress) as events of the run, written as they arrive.

Dagster keeps Pipes custom messages until the external process has ended (PipesSession.get_custom_messages); a
live view needs each one in the event log when it is sent. The readers below hand the message handler to the usual
reader through a wrapper that turns each progress message into an AssetObservation of the asset (metadata: the
message's fields; description and a DEBUG log line: its text, for people reading the run) and passes every
other message on unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import dagster as dg

from kto_pipeline.progress import from_message, is_progress, to_message


class _ObservingHandler:
    """A PipesMessageHandler that observes progress messages and delegates everything else."""

    def __init__(self, handler: Any):
        self._handler = handler

    def handle_message(self, message: Any) -> None:
        params = message.get("params") or {}
        if message.get("method") == "report_custom_message" and is_progress(params.get("payload")):
            observe(self._handler._context, params["payload"])  # noqa: SLF001 - the handler's own context
        else:
            self._handler.handle_message(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


def observe(context: dg.AssetExecutionContext, payload: dict[str, Any]) -> None:
    try:
        progress = from_message(payload)
    except ValueError as e:  # another version: say so (an exception here would vanish in the reader's thread)
        context.log.warning(f"training progress not shown: {e}")
        return
    context.log_event(
        dg.AssetObservation(asset_key=context.asset_key, description=progress.text(), metadata=to_message(progress))
    )
    context.log.debug(progress.text())


class _Observing:
    """Mixed into a message reader: its handler observes progress messages."""

    @contextmanager
    def read_messages(self, handler: Any):
        with super().read_messages(_ObservingHandler(handler)) as params:  # type: ignore[misc]
            yield params


class ProgressTempFileReader(_Observing, dg.PipesTempFileMessageReader):
    """PipesSubprocessClient's default reader (the local and torchrun launchers), observing progress."""


def ray_job_reader() -> dg.PipesMessageReader:
    """dagster-ray's Ray job log reader (the ray launcher, KubeRay included), observing progress. A function: the
    ray extra is optional, imported only when a training uses it."""
    from dagster_ray import PipesRayJobMessageReader

    class ProgressRayJobReader(_Observing, PipesRayJobMessageReader):
        pass

    return ProgressRayJobReader()
