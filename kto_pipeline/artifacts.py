"""The one way to build an artifact: versioned folders, built once, never seen half-written.

    store = Store(root)
    version = version_of(kto_dataset=data_version, config=config.fingerprint())
    art = store.get_or_build("lora_adapter", version, lambda tmp: train_into(tmp))
    art.path  # {root}/lora_adapter/{version}/, holding `.complete`

Every build of one version takes that version's lock (filelock: released when the process dies, too), checks
`.complete` again (a concurrent run may have finished it while we waited), builds in a scratch folder nobody
else uses, marks it complete and renames it into place in one step. A folder is complete iff it holds
`.complete`; nothing else ever appears under the final name. `build_once(folder, fn)` is the same for a
folder outside a store (the validated-file cache, the built base models).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

COMPLETE = ".complete"  # written last, inside the scratch folder: a folder without it is an interrupted attempt
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def hash_file(path: Path, h: Any) -> str:
    """Feed the file to hashlib-style hasher h; return its hex digest."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: h).hexdigest()


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


def _plain(value: Any, where: str) -> Any:
    """value if it is JSON data (so two runs that mean the same inputs hash the same), else a TypeError."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"version input {where} is a {type(value).__name__}: pass str/int/float/bool/list/dict")


def version_of(**inputs: Any) -> str:
    """The one version recipe: 16 hex chars of sha256 over the inputs as canonical JSON. Name every input
    (upstream versions, config fingerprints, code versions): a changed input is a new version."""
    if not inputs:
        raise ValueError("version_of needs at least one input")
    blob = json.dumps(_plain(inputs, "inputs"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def holder_file(lock: Path) -> Path:
    return lock.with_name(lock.name + ".holder")


@contextmanager
def exclusive(path: Path, holder: str = "", on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (blocking; released when the process dies, too). Who holds it is written
    next to it (`<lock>.holder`), so a waiter can say whom it waits for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if on_wait is not None:
            try:
                on_wait(holder_file(path).read_text().strip() or "another process")
            except OSError:
                on_wait("another process")
        lock.acquire()
    except PermissionError:
        raise PermissionError(
            f"cannot open the lock file {path} (made by another user?): give it write "
            "permission, or choose another lock path"
        ) from None
    try:
        holder_file(path).write_text(f"{holder} (pid {os.getpid()})")
        yield
    finally:
        holder_file(path).unlink(missing_ok=True)
        lock.release()


def _discard(folder: Path) -> None:
    """Remove a folder nobody may use any more: renamed aside first, so a reader never sees it half-deleted."""
    if folder.exists():
        aside = folder.with_name(f".{folder.name}.discard-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)


def build_once(
    final: Path,
    build: Callable[[Path], Any],
    *,
    resumable: bool = False,
    holder: str = "",
    on_wait: Callable[[str], None] | None = None,
) -> bool:
    """Make `final` a complete folder by calling build(scratch) unless it already is one; True if this call built it.

    resumable: the scratch folder has a fixed name (`.resume/{name}`) and survives a failure, so the next
    attempt continues from what the last one left (training checkpoints, verified GGUF files). Safe because
    only the holder of the lock ever touches it. Otherwise each attempt gets its own folder (pid + uuid),
    removed on failure.
    """
    final = Path(final)
    if is_complete(final):
        return False
    lock = final.with_name(f".{final.name}.lock")
    with exclusive(lock, holder or f"building {final}", on_wait):
        if is_complete(final):  # a concurrent run finished it while we waited for the lock
            return False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed builder: only a lock holder
            shutil.rmtree(stale, ignore_errors=True)  # makes them, and the lock is ours now
        if resumable:
            tmp = final.parent / ".resume" / final.name  # keeps the final name: a builder may record it
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            tmp.mkdir(parents=True)
        try:
            build(tmp)
            if not (tmp / COMPLETE).exists():  # a builder may write its own (with build facts in it)
                (tmp / COMPLETE).write_text("")
            _discard(final)  # not complete: an interrupted folder of an older layout, never a finished build
            try:
                tmp.rename(final)
            except OSError:
                if not is_complete(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # someone finished it first without our lock: keep theirs
                return False
        except BaseException as exc:
            free_mb = shutil.disk_usage(tmp.parent).free / 2**20  # before cleaning up frees some
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            # A subprocess (training, llama.cpp) reports ENOSPC only in its own log; what is left on the disk tells.
            if _disk_full(exc) or (free_mb < 1 and not isinstance(exc, KeyboardInterrupt)):
                raise DiskFullError(
                    f"{final}: disk full ({free_mb:.1f} MB free) while writing {final.parent.name}"
                    + ("" if not resumable else f"; what was written is kept in {tmp} to resume from")
                    + ": free some space and materialize it again"
                ) from exc
            raise
    return True


class DiskFullError(OSError):
    """A build ran out of disk space; the message names the folder, the space left and the asset."""


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (pyarrow and subprocesses report it only in their text)."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@dataclass(frozen=True)
class Artifact:
    asset: str
    version: str
    path: Path
    built: bool  # False: an earlier or concurrent build of the same version was reused


class Store:
    """{root}/{asset}/{version}/ folders, each built once through get_or_build."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def path(self, asset: str, version: str) -> Path:
        for field, name in (("asset", asset), ("version", version)):
            if not name or name.startswith(".") or not set(name) <= _SAFE:
                raise ValueError(f"{field} {name!r}: use letters, digits, '-', '_' and '.', not starting with '.'")
        return self.root / asset / version

    def is_complete(self, asset: str, version: str) -> bool:
        return is_complete(self.path(asset, version))

    def get_or_build(
        self,
        asset: str,
        version: str,
        build: Callable[[Path], Any],
        *,
        resumable: bool = False,
        holder: str = "",
        on_wait: Callable[[str], None] | None = None,
    ) -> Artifact:
        """The complete folder of (asset, version), calling build(scratch folder) only if none exists yet."""
        path = self.path(asset, version)
        built = build_once(
            path, build, resumable=resumable, holder=holder or f"building {asset} {version}", on_wait=on_wait
        )
        return Artifact(asset, version, path, built)

    def get(self, asset: str, version: str) -> Artifact:
        """An existing complete folder; a clear error when it is missing or was never finished."""
        path = self.path(asset, version)
        if not is_complete(path):
            raise FileNotFoundError(
                f"{asset} {version}: {path} is missing or incomplete (no {COMPLETE}); materialize {asset} again"
            )
        return Artifact(asset, version, path, False)

    @property
    def cache_dir(self) -> Path:
        """Built base models (the tiny and smol presets) live here, shared by all versions."""
        return self.root / "cache"
