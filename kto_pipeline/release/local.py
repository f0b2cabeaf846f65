"""The default release target: an embedded, content-addressed registry on disk (no account, no server).

    {root}/registry/{repo_id}/
        index.json            head, tags, versions (each with its file manifest)
        blobs/{sha256}        every released file once, read-only
        versions/{id}/        a plain model folder (hard links into blobs/), usable by transformers/llama.cpp
        latest -> versions/{id}

A version id is the hash of the file manifest, so publishing unchanged content creates nothing; publishing
old content again moves `head` back to the existing version. Tags are immutable names for versions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from kto_pipeline.artifacts import exclusive
from kto_pipeline.release.content import (
    ReleaseError,
    ReleaseResult,
    check_names,
    default_tag,
    digest_file,
    folder_manifest,
    version_id,
)

log = logging.getLogger("kto_pipeline.release")


class LocalRegistry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / "registry"

    def repo_dir(self, repo_id: str) -> Path:
        check_names(repo_id, None)
        return self.root / repo_id

    def index(self, repo_id: str) -> dict:
        path = self.repo_dir(repo_id) / "index.json"
        if not path.exists():
            return {"repo_id": repo_id, "head": None, "tags": {}, "versions": []}
        return json.loads(path.read_text())

    def resolve(self, repo_id: str, ref: str = "latest") -> Path:
        """A version folder by version id, tag, or "latest"."""
        idx = self.index(repo_id)
        vid = idx["head"] if ref == "latest" else idx["tags"].get(ref, ref)
        if vid is None or not any(v["id"] == vid for v in idx["versions"]):
            raise ReleaseError(f"{repo_id} has no version or tag {ref!r} in {self.repo_dir(repo_id)}")
        return self.repo_dir(repo_id) / "versions" / vid

    def problems(self, repo_id: str, ref: str = "latest") -> list[str]:
        """Re-hash a version folder against its manifest: one sentence per file missing, added or changed."""
        folder = self.resolve(repo_id, ref)
        entry = next(v for v in self.index(repo_id)["versions"] if v["id"] == folder.name)
        have = {p: d.sha256 for p, d in folder_manifest(folder).items()}
        want = {p: f["sha256"] for p, f in entry["files"].items()}
        return (
            [f"{p}: missing" for p in sorted(want.keys() - have.keys())]
            + [f"{p}: not part of the release" for p in sorted(have.keys() - want.keys())]
            + [
                f"{p}: content changed (sha256 {have[p][:12]}, released {want[p][:12]})"
                for p in sorted(want.keys() & have.keys())
                if have[p] != want[p]
            ]
        )

    def verify(self, repo_id: str, ref: str = "latest") -> bool:
        return not self.problems(repo_id, ref)

    def checkout(self, repo_id: str, ref: str = "latest") -> Path:
        """The version folder to load, verified first: a flipped byte is reported, never handed out."""
        problems = self.problems(repo_id, ref)
        if problems:
            raise ReleaseError(f"{repo_id} {ref} in {self.resolve(repo_id, ref)} is damaged: " + "; ".join(problems))
        return self.resolve(repo_id, ref)

    @contextlib.contextmanager
    def _locked(self, repo_id: str):
        d = self.repo_dir(repo_id)
        d.mkdir(parents=True, exist_ok=True)
        with exclusive(d / ".lock", f"a release of {repo_id}"):  # two runs releasing the same repo take turns
            yield d

    def publish(
        self, folder: str | os.PathLike, repo_id: str, tag: str | None = None, message: str | None = None
    ) -> ReleaseResult:
        check_names(repo_id, tag)
        manifest = folder_manifest(Path(folder))
        vid = version_id(manifest)
        tag = tag or default_tag(vid)
        with self._locked(repo_id) as d:
            idx = self.index(repo_id)
            if idx["tags"].get(tag, vid) != vid:
                raise ReleaseError(
                    f"tag {tag!r} of {repo_id} already names version {idx['tags'][tag]}, "
                    f"not this content ({vid}); tags are immutable, choose another"
                )
            known = {v["id"] for v in idx["versions"]}
            created = vid not in known
            if created:
                self._write_version(d, Path(folder), manifest, vid)
                idx["versions"].append(
                    {
                        "id": vid,
                        "parent": idx["head"],
                        "message": message or f"release {tag}",
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "files": {p: {"sha256": f.sha256, "size": f.size} for p, f in manifest.items()},
                    }
                )
                log.info("local registry: new version %s of %s (%d files)", vid, repo_id, len(manifest))
            else:
                log.info("local registry: %s already holds this content as version %s; nothing new", repo_id, vid)
            idx["head"] = vid
            idx["tags"][tag] = vid
            _write_json(d / "index.json", idx)
            _point(d / "latest", Path("versions") / vid)
        return ReleaseResult(
            "local",
            repo_id,
            vid,
            tag,
            vid,
            created,
            str(d / "versions" / vid),
            len(manifest),
            sum(f.size for f in manifest.values()),
        )

    def _write_version(self, d: Path, folder: Path, manifest: dict, vid: str) -> None:
        blobs = d / "blobs"
        blobs.mkdir(exist_ok=True)
        tmp = d / "versions" / f".{vid}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, digest in manifest.items():
            blob = blobs / digest.sha256
            if not blob.exists():
                part = blobs / f".{digest.sha256}.partial"
                shutil.copyfile(folder / rel, part)
                if digest_file(part).sha256 != digest.sha256:  # the source changed while we were copying
                    part.unlink()
                    raise ReleaseError(f"{folder / rel} changed during the release; try again")
                part.chmod(0o444)  # shared by hard links: nobody may edit a released file in place
                os.replace(part, blob)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dst)
            except OSError:  # another file system, or links not allowed: a copy is just bigger
                shutil.copyfile(blob, dst)
        final = d / "versions" / vid
        if final.exists():  # left by a run that died before writing the index: not a release, replace it
            shutil.rmtree(final)
        os.replace(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
