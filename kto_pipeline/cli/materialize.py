"""`dagster asset materialize` as a child process, watched through the instance.

The child is Dagster's own CLI, so `kto train` behaves exactly like it; its whole output (DEBUG event lines,
tracebacks, the training process's tqdm bars) goes to a log file under the instance. What the terminal shows
comes from the run's events, read back from the instance's event log as they are written: structured
(materialization metadata, check evaluations, errors), not scraped from text.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Every event line of Dagster's console logger: "<time> - dagster - <LEVEL> - <job> - <run id> - ...".
RUN_ID = re.compile(r" - dagster - [A-Z]+ - \S+ - ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) - ")
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
    """Copies the child's output to the log file (and the terminal with --verbose); spots the run id."""

    def __init__(self, stream, log, echo: bool):
        super().__init__(daemon=True)
        self.stream, self.log, self.echo = stream, log, echo
        self.run_id: str | None = None
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
                if self.run_id is None and (m := RUN_ID.search(line)):
                    self.run_id = m.group(1)
        if partial:
            self.tail.append(partial)


def materialize(
    cmd: list[str], env: dict[str, str], log: Path, verbose: bool, on_event: Callable[[object], None]
) -> Outcome:
    """Run `cmd` (a `dagster asset materialize`), calling on_event with each EventLogEntry of its run in order."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # the instance the child writes to
    with open(log, "wb") as sink:
        sink.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = _Output(proc.stdout, sink, verbose)
        output.start()
        instance, cursor, interrupted = None, None, False
        while True:
            try:
                finished = proc.poll() is not None
                if finished:
                    # The run id may sit in the last lines; a grandchild still holding the pipe must not hang us.
                    output.join(timeout=10)
                if output.run_id and instance is None:
                    instance = dg.DagsterInstance.get()
                if instance is not None:
                    cursor = _drain(instance, output.run_id, cursor, on_event)
                if finished:
                    break
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                # Ctrl-C reached the child too (same process group): Dagster stops the run; report what happened.
                interrupted = True
                proc.wait()
    if instance is not None:
        instance.dispose()
    return Outcome(proc.returncode, output.run_id, log, list(output.tail), interrupted)


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
