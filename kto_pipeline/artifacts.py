"""File helpers shared by every stage: content hashes and all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

COMPLETE = ".complete"  # written last: a folder without it is an interrupted attempt


def hash_file(path: Path, h: Any) -> str:
    """Feed the file to hashlib-style hasher h in 4 MiB blocks; return its hex digest."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return hash_file(path, hashlib.sha256())


def dir_digest(folder: Path, pattern: str = "*") -> dict[str, Any]:
    """Total size and one sha256 over the matching files (names and contents, in name order)."""
    h = hashlib.sha256()
    size = 0
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        h.update(path.name.encode() + b"\0" + file_sha256(path).encode())
        size += path.stat().st_size
    return {"size_bytes": size, "sha256": h.hexdigest()}


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).exists()


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes `folder` only if the block succeeds (never half-written)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    (tmp / COMPLETE).write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


@contextmanager
def exclusive(path: Path, holder: str = "", on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (blocking; released when the process dies, too). The holder's
    description is written into the file, so a waiter can say whom it waits for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(path, "a+")
    except PermissionError:
        raise PermissionError(f"cannot open the lock file {path} (made by another user?): give others write "
                              "permission on it (the GPU lock can also move: KTO_GPU_LOCK)") from None
    with fh:
        with contextlib.suppress(OSError):  # the GPU is the machine's: let other users take turns too
            os.chmod(path, 0o666)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                fh.seek(0)
                on_wait(fh.read().strip() or "another process")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{holder} (pid {os.getpid()})")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
