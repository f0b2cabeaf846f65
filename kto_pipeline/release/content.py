"""Content addressing shared by both release targets.

A release is a folder; its identity is the manifest {path: sha256, size}. The version id is a hash of
that manifest, so the same files always give the same version on every target, and "did anything
change?" is a dictionary comparison. Git blob ids are kept too: the Hub reports them for small files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

TAG = re.compile(r"^[A-Za-z0-9][\w.+-]{0,127}$")


class ReleaseError(RuntimeError):
    """A release cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    git_sha1: str
    size: int


def digest_file(path: Path) -> FileDigest:
    # One read for both digests (hashlib.file_digest takes one): release files are gigabytes.
    sha, size = hashlib.sha256(), path.stat().st_size
    git = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            git.update(block)
    return FileDigest(sha.hexdigest(), git.hexdigest(), size)


def folder_manifest(folder: Path) -> dict[str, FileDigest]:
    """Every regular file under folder, by POSIX relative path. Symlinks are refused: a release holds bytes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"release folder {folder} does not exist")
    out: dict[str, FileDigest] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise ReleaseError(f"{path} is a symlink; a release folder must hold plain files")
        if path.is_file():
            out[path.relative_to(folder).as_posix()] = digest_file(path)
    if not out:
        raise ReleaseError(f"release folder {folder} is empty")
    return out


def version_id(manifest: dict[str, FileDigest]) -> str:
    canonical = json.dumps({p: [d.sha256, d.size] for p, d in sorted(manifest.items())}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_tag(vid: str) -> str:
    return f"release-{vid}"


def repo_id_problem(repo_id: str) -> str:
    """Why repo_id is not a valid Hub repo id ('name' or 'namespace/name'), by the Hub client's own rules; '' if
    it is."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return f"invalid repo id {repo_id!r}: {exc}"
    return ""


def check_names(repo_id: str, tag: str | None) -> None:
    problem = repo_id_problem(repo_id)
    if problem:
        raise ReleaseError(problem)
    if tag is not None and not TAG.match(tag):
        raise ReleaseError(f"invalid tag {tag!r}: letters, digits and '-_.+', starting with a letter or digit")


@dataclass
class ReleaseResult:
    """What a publish did. `created` is False when the content was already released (no new version/commit)."""

    target: str  # "local" or "hub"
    repo_id: str
    version: str  # content id (version_id of the manifest)
    tag: str
    revision: str  # local: the version id; hub: the commit oid
    created: bool
    location: str  # local: the version folder; hub: the repo URL
    files: int
    size_bytes: int

    def as_metadata(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}
