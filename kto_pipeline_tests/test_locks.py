"""artifacts.exclusive: the file lock behind the gpu pool and the local registry."""

import subprocess
import sys
import time

from kto_pipeline.artifacts import exclusive, holder_file

HOLD = """import sys, time
from pathlib import Path
from kto_pipeline.artifacts import exclusive
with exclusive(Path(sys.argv[1]), "run A"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_second_taker_waits_and_names_the_holder(tmp_path):
    lock = tmp_path / "gpu.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waits: list[str] = []
    started = time.monotonic()
    with exclusive(lock, "run B", on_wait=waits.append):
        waited = time.monotonic() - started
        assert "run B" in holder_file(lock).read_text()
    assert waited > 1.0, "got the lock while the other process still held it (for 1.5 s)"
    assert len(waits) == 1 and waits[0].startswith("run A (pid ")
    assert not holder_file(lock).exists()  # released and cleared


def test_a_killed_holder_frees_the_lock(tmp_path):
    lock = tmp_path / "gpu.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with exclusive(lock, "run B", on_wait=lambda h: None):
        assert "run B" in holder_file(lock).read_text()
