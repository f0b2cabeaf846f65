"""The Hub target: one repo per model, one commit per distinct content, one tag per release.

The token comes from the HF_TOKEN environment variable at call time and nowhere else: it is never a
parameter, never stored on this object, never logged (error texts are scrubbed before they are logged or
raised). The endpoint is configurable (HF_ENDPOINT-style), so a mirror or the test server works the same.

Idempotency does not trust the client's own "skip unchanged files" logic alone: before every commit the
remote tree of `main` is listed and compared with the local manifest (sha256 for LFS files, git blob id
otherwise). No difference, no commit. Files the remote has and the release does not are deleted in the same
commit, so `main` always equals exactly one release. The commit names its parent, so a concurrent writer
makes it fail (and it is re-planned) instead of being silently merged.

Transient server errors (5xx, 429, timeouts) are retried with bounded exponential backoff. Each retry
re-plans from the remote state, so a commit whose response was lost is not committed twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kto_pipeline.release.content import (
    FileDigest,
    ReleaseError,
    ReleaseResult,
    check_names,
    default_tag,
    digest_file,
    folder_manifest,
    version_id,
)

log = logging.getLogger("kto_pipeline.release")
T = TypeVar("T")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
HUB_MANAGED = {".gitattributes"}  # created by the Hub with the repo; not part of any release


def read_token(env_var: str = "HF_TOKEN") -> str:
    token = os.environ.get(env_var, "").strip()
    if not token:
        raise ReleaseError(
            f"the hub target needs a token in the {env_var} environment variable "
            f"(export {env_var}=hf_...); it is read from there only, never from config or flags"
        )
    return token


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception, looking through wrappers (LFS errors arrive wrapped)."""
    from huggingface_hub.errors import HfHubHTTPError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc.response.status_code
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _transient(exc: BaseException) -> bool:
    import httpx

    e, seen = exc, 0
    while e is not None and seen < 8:
        if isinstance(e, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return _status(exc) in RETRY_STATUS


class HubTarget:
    def __init__(
        self,
        endpoint: str | None = None,
        private: bool = True,
        token_env: str = "HF_TOKEN",
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 16.0,
        verify: bool = True,
    ):
        self.endpoint, self.private, self.token_env = endpoint or None, private, token_env
        self.verify = verify  # download every file back after the commit and compare hashes
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s

    # -- plumbing ---------------------------------------------------------------------------------------
    def _api(self, token: str):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=token, library_name="kto_pipeline")

    def _retry(self, what: str, fn: Callable[[], T], token: str, retry_also: tuple[int, ...] = ()) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except ReleaseError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised scrubbed
                text = _scrub(f"{type(exc).__name__}: {exc}", token)
                retry = _transient(exc) or _status(exc) in retry_also
                if not retry or attempt == self.max_attempts:
                    raise ReleaseError(
                        f"hub: {what} failed" + (f" after {attempt} attempts" if retry else "") + f": {text}"
                    ) from None
                wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                log.warning(
                    "hub: %s failed (attempt %d/%d): %s; retrying in %.2fs",
                    what,
                    attempt,
                    self.max_attempts,
                    text.splitlines()[0],
                    wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _remote(self, api, repo_id: str, revision: str) -> tuple[str, dict]:
        """(commit oid, {path: RepoFile}) of one consistent snapshot of `revision`."""
        from huggingface_hub.hf_api import RepoFile

        sha = api.model_info(repo_id, revision=revision).sha
        files = {
            f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=sha) if isinstance(f, RepoFile)
        }
        return sha, files

    @staticmethod
    def _diff(remote: dict, manifest: dict[str, FileDigest]) -> tuple[list[str], list[str]]:
        changed = []
        for path, d in manifest.items():
            r = remote.get(path)
            same = (
                r is not None and r.size == d.size and (r.lfs.sha256 == d.sha256 if r.lfs else r.blob_id == d.git_sha1)
            )
            if not same:
                changed.append(path)
        deleted = [p for p in remote if p not in manifest and p not in HUB_MANAGED]
        return changed, deleted

    # -- the release ------------------------------------------------------------------------------------
    def publish(
        self, folder: str | os.PathLike, repo_id: str, tag: str | None = None, message: str | None = None
    ) -> ReleaseResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        check_names(repo_id, tag)
        if "/" not in repo_id:
            raise ReleaseError(f"hub repo id {repo_id!r} needs a namespace: 'user/{repo_id}' or 'org/{repo_id}'")
        folder = Path(folder)
        manifest = folder_manifest(folder)
        vid = version_id(manifest)
        tag = tag or default_tag(vid)
        token = read_token(self.token_env)
        api = self._api(token)
        url = self._retry("create_repo", lambda: api.create_repo(repo_id, private=self.private, exist_ok=True), token)
        log.info("hub: repo %s ready (%s)", repo_id, "private" if self.private else "public")

        created = False

        def commit_once() -> str:
            nonlocal created
            head, remote = self._remote(api, repo_id, "main")
            changed, deleted = self._diff(remote, manifest)
            if not changed and not deleted:
                log.info("hub: %s main already holds this content (%s); no commit", repo_id, head[:12])
                return head
            ops = [CommitOperationDelete(path_in_repo=p) for p in deleted]
            ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in changed]
            log.info("hub: committing %d changed and %d deleted files to %s", len(changed), len(deleted), repo_id)
            info = api.create_commit(
                repo_id,
                ops,
                commit_message=message or f"Release {tag}",
                commit_description=f"kto_pipeline release {vid}",
                parent_commit=head,
            )
            created = info.oid != head  # the client may still find nothing changed and skip the commit
            return info.oid

        # 412: someone moved main between our listing and our commit; plan again from the new head.
        commit = self._retry("commit", commit_once, token, retry_also=(412,))
        if self.verify:  # before the tag: a release is tagged only once the Hub serves exactly its bytes
            bad = self._retry("verify", lambda: verify_remote(api, repo_id, commit, manifest), token)
            if bad:
                raise ReleaseError(
                    f"hub: {repo_id} commit {commit[:12]} does not serve the released bytes, so it was "
                    "not tagged: " + "; ".join(bad) + ". Nobody should download this commit; the Hub "
                    "keeps one copy per content hash, so report it to the Hub before releasing again"
                )
        self._retry("tag", lambda: self._tag(api, repo_id, tag, commit, manifest), token)
        return ReleaseResult(
            "hub", repo_id, vid, tag, commit, created, str(url), len(manifest), sum(f.size for f in manifest.values())
        )

    def _tag(self, api, repo_id: str, tag: str, commit: str, manifest: dict) -> None:
        from huggingface_hub.errors import HfHubHTTPError

        tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
        if tag not in tags:
            try:
                api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"kto_pipeline release {tag}")
                log.info("hub: tagged %s as %s", commit[:12], tag)
                return
            except HfHubHTTPError as exc:
                if _status(exc) != 409:  # 409: an earlier attempt did create it; check it below
                    raise
                tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
        if tags[tag] == commit:
            return
        _, tagged = self._remote(api, repo_id, tag)
        if self._diff(tagged, manifest) != ([], []):
            raise ReleaseError(
                f"tag {tag!r} of {repo_id} already names commit {tags[tag][:12]} with other "
                "content; tags are immutable, choose another"
            )
        log.info("hub: tag %s already names this content (commit %s)", tag, tags[tag][:12])


def verify_remote(api, repo_id: str, revision: str, expected: dict[str, FileDigest] | None = None) -> list[str]:
    """Download every file of `revision` and hash it; the problems found, each naming its file (empty: intact).

    The Hub's own record is checked against the bytes it serves: lfs.sha256 for LFS files, the git blob id
    otherwise (get_paths_info). `expected` (a release's manifest) must match too, file for file, so a file the
    Hub stored wrong is caught even when its record was computed from the wrong bytes.
    """
    import tempfile

    from huggingface_hub import hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    listed = [
        f.path
        for f in api.list_repo_tree(repo_id, recursive=True, revision=revision)
        if isinstance(f, RepoFile) and f.path not in HUB_MANAGED
    ]
    records = {f.path: f for f in api.get_paths_info(repo_id, listed, revision=revision)}
    problems = [f"{p}: missing on the Hub" for p in sorted(set(expected or {}) - set(listed))]
    with tempfile.TemporaryDirectory(prefix="kto-verify-") as cache:
        for path in sorted(listed):
            local = Path(
                hf_hub_download(
                    repo_id, path, revision=revision, cache_dir=cache, endpoint=api.endpoint, token=api.token
                )
            )
            got = digest_file(local)
            local.unlink()  # one file on disk at a time, however large the release
            record, want = records.get(path), (expected or {}).get(path)
            if record is not None and record.lfs is not None and record.lfs.sha256 != got.sha256:
                problems.append(
                    f"{path}: the Hub serves sha256 {got.sha256[:16]}…, its LFS record says {record.lfs.sha256[:16]}…"
                )
            elif record is not None and record.lfs is None and record.blob_id != got.git_sha1:
                problems.append(
                    f"{path}: the Hub serves git blob {got.git_sha1[:12]}, its record says {record.blob_id[:12]}"
                )
            elif want is not None and (want.sha256, want.size) != (got.sha256, got.size):
                problems.append(
                    f"{path}: the Hub serves sha256 {got.sha256[:16]}… ({got.size} bytes), the release "
                    f"has {want.sha256[:16]}… ({want.size} bytes)"
                )
    return problems


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
