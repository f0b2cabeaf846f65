"""`dagster asset materialize` as a child process, watched through the instance.

The child is Dagster's own CLI, so `kto train` behaves exactly like it; its whole output (DEBUG event lines,
tracebacks, the training process's tqdm bars) goes to a log file under the instance. What the terminal shows
comes from the run's events, read back from the instance's event log as they are written: structured
(materialization metadata, check evaluations, training progress, errors), not scraped from text. Which run is
the child's comes from the run too: its executor's first engine event names the process it runs in.
"""

from __future__ import annotations

import collections
import datetime
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.5


def log_path(home: Path, command: str) -> Path:
    folder = home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"kto-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@dataclass
class Outcome:
    code: int
    run_id: str | None
    log: Path
    tail: list[str] = field(default_factory=list)  # the output's last lines: why a run never started
    interrupted: bool = False


class _Output(threading.Thread):
    """Copies the child's output to the log file (and the terminal with --verbose); keeps its last lines."""

    def __init__(self, stream, log, echo: bool):
        super().__init__(daemon=True)
        self.stream, self.log, self.echo = stream, log, echo
        self.tail: collections.deque[str] = collections.deque(maxlen=60)

    def run(self) -> None:
        partial = ""
        fd = self.stream.fileno()
        while chunk := os.read(fd, 65536):
            self.log.write(chunk)
            self.log.flush()
            if self.echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            *lines, partial = (partial + chunk.decode(errors="replace")).split("\n")
            for line in lines:
                self.tail.append(line.split("\r")[-1])  # a progress bar's last state
        if partial:
            self.tail.append(partial)


def materialize(
    cmd: list[str], env: dict[str, str], log: Path, verbose: bool, on_event: Callable[[object], None]
) -> Outcome:
    """Run `cmd` (a `dagster asset materialize`), calling on_event with each EventLogEntry of its run in order."""
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # the instance the child writes to
    started = datetime.datetime.now(datetime.UTC)
    with open(log, "wb") as sink:
        sink.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = _Output(proc.stdout, sink, verbose)
        output.start()
        instance, run_id, cursor, interrupted = None, None, None, False
        while True:
            try:
                finished = proc.poll() is not None
                if finished:
                    output.join(timeout=10)  # a grandchild still holding the pipe must not hang us
                instance = instance or _instance()
                if instance is not None and run_id is None:
                    run_id = run_of(instance, proc.pid, started)
                if run_id is not None:
                    cursor = _drain(instance, run_id, cursor, on_event)
                if finished:
                    break
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                # Ctrl-C reached the child too (same process group): Dagster stops the run; report what happened.
                interrupted = True
                proc.wait()
    if instance is not None:
        instance.dispose()
    return Outcome(proc.returncode, run_id, log, list(output.tail), interrupted)


def _instance():
    """The instance, or None while it cannot be opened (a broken dagster.yaml: the child reports why and stops)."""
    import dagster as dg

    try:
        return dg.DagsterInstance.get()
    except Exception:  # noqa: BLE001 - the child's error is the one to show
        return None


def run_of(instance, pid: int, since: datetime.datetime) -> str | None:
    """The run that process `pid` (a `dagster asset materialize`) executes, from the run's own events: the executor,
    which runs in the CLI's process, names that process in its first engine event. Only runs created since the
    child started are looked at (process ids are reused)."""
    import dagster as dg

    try:
        records = instance.get_run_records(filters=dg.RunsFilter(created_after=since), limit=50)
        for record in records:
            run_id = record.dagster_run.run_id
            events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=5).records
            for event in events:
                pid_of = event.event_log_entry.dagster_event.engine_event_data.metadata.get("pid")
                if pid_of is not None and pid_of.value == str(pid):
                    return run_id
    except Exception:  # noqa: BLE001 - SQLite busy while the run writes: look again next time
        pass
    return None


def _drain(instance, run_id: str, cursor: str | None, on_event: Callable[[object], None]) -> str | None:
    while True:
        try:
            conn = instance.get_records_for_run(run_id, cursor=cursor, limit=500)
        except Exception:  # noqa: BLE001 - SQLite busy while the run writes: read again next time
            return cursor
        for record in conn.records:
            on_event(record.event_log_entry)
        cursor = conn.cursor or cursor
        if not conn.has_more:
            return cursor
