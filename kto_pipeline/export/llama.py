"""Every use of llama.cpp goes through here: settings that work on every x86 CPU, and a child process for
the work whose native crash must not take the caller down.

Why: llama.cpp's CPU backend repacks quantized weights into "extra buffer types" (AMX tiles, 8x8 interleaved
blocks) chosen for the CPU it runs on. On Xeons with AVX-512 + AMX_INT8, llama-cpp-python 0.3.36 segfaults in
`decode` on every quantized file with them on (F16 is fine); with `use_extra_bufts = False` the same files load
and decode correctly (measured: Q8_0, Q5_K_M, Q4_K_M, Q4_0 of the tiny model and a real Q4_1 model). Llama()
takes no argument for it, so `load()` sets the field on the default model parameters Llama() starts from; the
test `test_llama_loads_without_extra_buffer_types` fails if an upgrade stops reading them.

Even so, llama.cpp on recent Xeons is fragile (a build on the GPU host crashed while loading F16), so export
work runs in `isolated()`: a child process whose death by a signal becomes a `NativeCrash` naming what was
being done, the signal, llama.cpp's system info and its last log lines.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kto_pipeline.patches import llama_model_params

# Set to 1 to let llama.cpp use its extra buffer types (faster on CPUs where they work; see above).
EXTRA_BUFTS_ENV = "KTO_LLAMA_EXTRA_BUFTS"
# Test hook: an isolated child whose `what` contains this variable's text crashes natively (a real SIGSEGV,
# reading address 0) before it runs its target, e.g. KTO_LLAMA_CHILD_FAULT="verifying model-Q8_0.gguf".
FAULT_ENV = "KTO_LLAMA_CHILD_FAULT"
ADVICE = (
    f"llama.cpp crashed natively. On CPUs with AVX-512/AMX its extra buffer types are the usual cause: "
    f"make sure {EXTRA_BUFTS_ENV} is not set to 1; otherwise reinstall llama-cpp-python so it is compiled "
    "for this CPU (pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36), or choose other "
    "quantizations (GGUFConfig.quantizations)."
)


class NativeCrash(RuntimeError):
    """A child process running llama.cpp died by a signal."""


def extra_bufts_enabled() -> bool:
    return os.environ.get(EXTRA_BUFTS_ENV, "") == "1"


def load(path: str | os.PathLike, **kwargs: Any):
    """`llama_cpp.Llama(model_path=path, **kwargs)` with parameters that work on every x86 CPU."""
    from llama_cpp import Llama

    with llama_model_params(use_extra_bufts=extra_bufts_enabled()):
        return Llama(model_path=str(path), **kwargs)


def system_info() -> str:
    """llama.cpp's view of this CPU (`AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 | …`)."""
    try:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    except Exception as e:  # noqa: BLE001 - only used inside an error message
        return f"(unavailable: {type(e).__name__}: {e})"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def isolated(target: str, *args: Any, what: str, timeout: float | None = None, **kwargs: Any) -> Any:
    """Run `module:function(*args, **kwargs)` in a child Python process and return its result.

    An exception in the child is raised here again (pickled); a child killed by a signal raises NativeCrash
    with `what` (e.g. "verifying model-Q8_0.gguf (Q8_0)"), the signal, system_info() and the log's tail.
    """
    with tempfile.TemporaryDirectory(prefix="kto_llama_") as tmp:
        job, result, log = Path(tmp, "job.pkl"), Path(tmp, "result.pkl"), Path(tmp, "child.log")
        job.write_bytes(pickle.dumps((target, what, args, kwargs)))
        with open(log, "wb") as sink:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", __name__, str(job), str(result)],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise NativeCrash(
                    f"{what}: llama.cpp did not finish within {timeout:.0f} s\nlast log lines:\n{_tail(log)}"
                ) from None
        if proc.returncode < 0:
            raise NativeCrash(
                f"{what}: the llama.cpp process was killed by {_signal_name(proc.returncode)}.\n"
                f"llama.cpp system info: {system_info()}\n"
                f"{EXTRA_BUFTS_ENV}={'1' if extra_bufts_enabled() else 'unset (extra buffer types off)'}\n"
                f"last log lines:\n{_tail(log)}\n{ADVICE}"
            )
        if not result.is_file():
            raise NativeCrash(
                f"{what}: the llama.cpp process exited with code {proc.returncode} without a "
                f"result\nlast log lines:\n{_tail(log)}"
            )
        ok, value = pickle.loads(result.read_bytes())
        if not ok:
            raise value
        return value


def _tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"


def _child(job: Path, result: Path) -> None:
    faulthandler.enable()  # a native crash prints the Python stack that led to it into the log
    target, what, args, kwargs = pickle.loads(job.read_bytes())
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    fault = os.environ.get(FAULT_ENV)
    if fault and fault in what:
        import ctypes

        print(f"{FAULT_ENV}: crashing on purpose while {what}", flush=True)
        ctypes.string_at(0)
    try:
        value = (True, fn(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            pickle.loads(pickle.dumps(e))  # custom __init__ signatures pickle but do not unpickle
            value = (False, e)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its text
            value = (False, RuntimeError(f"{type(e).__name__}: {e}"))
    result.write_bytes(pickle.dumps(value))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
