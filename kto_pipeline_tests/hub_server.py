"""A small in-memory Hugging Face Hub for tests, spoken to by the real, unmodified `huggingface_hub` client.

It implements the part of the Hub HTTP API that `HfApi.create_repo`, `create_commit` / `upload_folder`
(preupload, LFS batch + basic/multipart upload + verify, NDJSON commit), `create_tag`, `list_repo_tree` /
`list_repo_files` / `list_repo_refs` / `list_repo_commits`, `model_info` / `dataset_info` and
`hf_hub_download` (the `resolve` endpoint, with ETag and X-Repo-Commit) use, and with them
`datasets.load_dataset("owner/name")` (info, paths-info, tree, resolve). The protocol was read off
huggingface_hub 1.33 (`_commit_api.py`, `lfs.py`, `file_download.py`, `hf_api.py`).

Model and dataset repos: the same routes under `/api/models/...` and `/api/datasets/...`, and the Hub's web
paths `/{repo}/...` and `/datasets/{repo}/...`. They are separate repos, keyed as on those web paths:
"owner/name" for a model, "datasets/owner/name" for a dataset (`hub.repos`, `history`, `file_bytes` and
every `repo_id` argument of the handlers below take that key).

Xet: the client uploads LFS-mode files through Xet whenever `hf_xet` is installed and HF_HUB_DISABLE_XET
is unset; this server has no Xet storage. A server can only steer that through `preupload`: with
`upload_mode="regular"` every file is committed inline (base64 in the NDJSON), which a Xet-enabled client
accepts; with "auto" (binary weights as LFS, like the Hub's .gitattributes) the client must run with Xet
disabled, and the xet-write-token endpoint answers 501 saying so.

Fault injection: `server.inject_fault("commit", nth=2, status=500)` fails the 2nd commit request from now
on, once. `after=True` applies the request first and then answers the error (a lost response).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".model", ".parquet", ".png")
LFS_POINTER_SIZE = 134  # what the Hub reports for an LFS pointer file; the client only stores it


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    size: int
    oid: str  # git blob id (for LFS: of the pointer, here a stand-in derived from the sha256)
    sha256: str | None  # set for LFS files
    key: str  # where the bytes live in Hub.blobs


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    repo_type: str = "model"
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class FakeHub:
    """State and handlers. Start with `FakeHub(token=...).start()`; `endpoint` is the base URL."""

    def __init__(
        self,
        token: str | None = None,
        upload_mode: str = "auto",
        lfs_threshold: int = 10 << 20,
        multipart_chunk_size: int | None = None,
        user: str = "tester",
    ):
        assert upload_mode in ("auto", "regular", "lfs")
        self.token, self.upload_mode, self.lfs_threshold = token, upload_mode, lfs_threshold
        self.multipart_chunk_size, self.user = multipart_chunk_size, user
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # "sha256:<hex>" (LFS objects) or "git:<sha1>" (inline blobs)
        self.parts: dict[tuple[str, int], bytes] = {}  # multipart upload parts
        self.requests: list[dict] = []  # method, path, kind, status, headers (for assertions)
        self.faults: list[dict] = []
        self.corrupt_paths: set[str] = set()  # see corrupt_on_commit
        self._seq = 0
        self.lock = threading.RLock()
        self.httpd: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- test helpers
    def inject_fault(self, kind: str, nth: int = 1, status: int = 500, after: bool = False) -> None:
        """Fail the nth request of `kind` (counted from now) once with `status`."""
        with self.lock:
            self.faults.append({"kind": kind, "left": nth, "status": status, "after": after, "fired": False})

    def count(self, kind: str, status: int | None = None) -> int:
        return sum(1 for r in self.requests if r["kind"] == kind and (status is None or r["status"] == status))

    def history(self, repo_id: str, branch: str = "main") -> list[Commit]:
        repo = self.repos[repo_id]
        out, oid = [], repo.branches.get(branch)
        while oid:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out

    def flip_byte(self, repo_id: str, path: str, revision: str = "main", offset: int | None = None) -> int:
        """Storage corruption: flip one byte of the stored bytes of `path` (its record, sha256 and size included,
        stays as it was). Returns the offset flipped (default: the middle)."""
        with self.lock:
            key = self._commit(self.repos[repo_id], revision).files[path].key
            data = bytearray(self.blobs[key])
            offset = len(data) // 2 if offset is None else offset
            data[offset] ^= 0xFF
            self.blobs[key] = bytes(data)
        return offset

    def corrupt_on_commit(self, path: str) -> None:
        """The next commit that adds `path` stores it with one byte flipped (bit rot between upload and storage)."""
        with self.lock:
            self.corrupt_paths.add(path)

    def file_bytes(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        repo = self.repos[repo_id]
        return self.blobs[self._commit(repo, revision).files[path].key]

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def key(repo_type: str | None, repo_id: str) -> str:
        """Where a repo lives in `repos`: "owner/name" (model) or "datasets/owner/name" (dataset)."""
        if repo_type not in (None, "model", "dataset"):
            raise HttpError(400, f"this fake hub only hosts model and dataset repos, not {repo_type!r}")
        return f"datasets/{repo_id}" if repo_type == "dataset" else repo_id

    def _fault(self, kind: str) -> dict | None:
        with self.lock:
            for f in self.faults:
                if f["kind"] == kind and not f["fired"]:
                    f["left"] -= 1
                    if f["left"] == 0:
                        f["fired"] = True
                        return f
        return None

    def _repo(self, repo_id: str, auth: str | None, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or ((repo.private or write) and auth != self.token):
            raise HttpError(404 if auth else 401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, Entry], title: str, message: str
    ) -> Commit:
        self._seq += 1
        state = json.dumps(
            [parent.oid if parent else None, sorted((p, e.oid) for p, e in files.items()), title, self._seq]
        )
        oid = hashlib.sha1(state.encode()).hexdigest()
        commit = Commit(
            oid,
            parent.oid if parent else None,
            title,
            message,
            time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            files,
        )
        repo.commits[oid] = commit
        return commit

    def _store_inline(self, data: bytes) -> Entry:
        oid = git_sha1(data)
        self.blobs["git:" + oid] = data
        return Entry(len(data), oid, None, "git:" + oid)

    def _lfs_entry(self, sha256: str, size: int) -> Entry:
        # A stand-in for the pointer file's git id: stable per content, distinct from any sha1 of the bytes.
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return Entry(size, git_sha1(pointer), sha256, "sha256:" + sha256)

    def _mode_for(self, path: str, size: int, sample: bytes) -> str:
        if self.upload_mode != "auto":
            return self.upload_mode
        if path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold or b"\0" in sample:
            return "lfs"
        return "regular"

    def _tree_item(self, path: str, e: Entry) -> dict:
        item = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
        if e.sha256:
            item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": LFS_POINTER_SIZE}
        return item

    # ---------------------------------------------------------------- API handlers
    def create_repo(self, body: dict, auth: str | None) -> dict:
        if auth != self.token or not auth:
            raise HttpError(401, "Invalid credentials in Authorization header")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        key = self.key(repo_type, repo_id)
        url = f"{self.endpoint}/{key}"
        with self.lock:
            if key in self.repos:
                raise HttpError(409, f"You already created this {repo_type} repo", body={"url": url})
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = self.repos[key] = Repo(repo_id, private, repo_type)
            init = self._new_commit(
                repo, None, {".gitattributes": self._store_inline(GITATTRIBUTES)}, "initial commit", ""
            )
            repo.branches["main"] = init.oid
        return {"url": url, "name": repo_id, "id": repo_id}

    def info(self, repo_id: str, revision: str | None, auth: str | None) -> dict:
        repo = self._repo(repo_id, auth)
        c = self._commit(repo, revision or "main")
        rid = repo.repo_id
        return {
            "id": rid,
            **({"modelId": rid} if repo.repo_type == "model" else {}),
            "author": rid.split("/")[0],
            "sha": c.oid,
            "private": repo.private,
            "lastModified": c.date,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(c.files)],
        }

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool, auth: str | None) -> list[dict]:
        c = self._commit(self._repo(repo_id, auth), revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out, dirs = [], set()
        for p in sorted(c.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                dirs.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            out.append(self._tree_item(p, c.files[p]))
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in sorted(dirs)]
        if prefix and not out and not folders:
            raise HttpError(404, f"{path} does not exist", "EntryNotFound")
        return folders + out

    def paths_info(self, repo_id: str, revision: str, paths: list[str], auth: str | None) -> list[dict]:
        c = self._commit(self._repo(repo_id, auth), revision)
        return [self._tree_item(p, c.files[p]) for p in paths if p in c.files]

    def refs(self, repo_id: str, auth: str | None) -> dict:
        repo = self._repo(repo_id, auth)

        def fmt(kind, d):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o} for n, o in sorted(d.items())]

        return {
            "branches": fmt("heads", repo.branches),
            "tags": fmt("tags", repo.tags),
            "converts": [],
            "pullRequests": [],
        }

    def commits(self, repo_id: str, revision: str, auth: str | None) -> list[dict]:
        repo = self._repo(repo_id, auth)
        out, oid = [], self._commit(repo, revision).oid
        while oid:
            c = repo.commits[oid]
            out.append(
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": self.user}]}
            )
            oid = c.parent
        return out

    def preupload(self, repo_id: str, revision: str, body: dict, auth: str | None) -> dict:
        repo = self._repo(repo_id, auth, write=True)
        try:
            current = self._commit(repo, revision).files
        except HttpError:
            current = {}
        files = []
        for f in body["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            mode = self._mode_for(f["path"], int(f["size"]), sample)
            old = current.get(f["path"])
            # The client skips a file whose remote oid equals its local one: sha256 for LFS, git sha1 otherwise.
            oid = None if old is None else (old.sha256 if mode == "lfs" else (None if old.sha256 else old.oid))
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": files}

    def lfs_batch(self, repo_id: str, body: dict, auth: str | None) -> dict:
        self._repo(repo_id, auth, write=True)
        if body.get("operation") != "upload":
            raise HttpError(400, "only uploads are supported")
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size, "authenticated": True}
            if "sha256:" + oid not in self.blobs:
                href = f"{self.endpoint}/_lfs/upload/{oid}?size={size}"
                upload: dict = {"href": href}
                chunk = self.multipart_chunk_size
                if chunk and size > chunk:
                    n = -(-size // chunk)
                    upload["header"] = {
                        "chunk_size": str(chunk),
                        **{str(i): f"{self.endpoint}/_lfs/upload/{oid}/part/{i}" for i in range(1, n + 1)},
                    }
                item["actions"] = {"upload": upload, "verify": {"href": f"{self.endpoint}/_lfs/verify/{oid}"}}
            objects.append(item)
        return {"transfer": "multipart" if self.multipart_chunk_size else "basic", "objects": objects}

    def lfs_put(self, oid: str, size: int | None, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid or (size is not None and size != len(data)):
            raise HttpError(400, f"uploaded content does not match oid {oid} / size {size}")
        with self.lock:
            self.blobs["sha256:" + oid] = data

    def lfs_put_part(self, oid: str, n: int, data: bytes) -> str:
        with self.lock:
            self.parts[(oid, n)] = data
        return hashlib.md5(data).hexdigest()

    def lfs_complete(self, oid: str, body: dict) -> None:
        with self.lock:
            data = b""
            for part in sorted(body["parts"], key=lambda p: p["partNumber"]):
                chunk = self.parts.get((oid, part["partNumber"]))
                if chunk is None or hashlib.md5(chunk).hexdigest() != part["etag"].strip('"'):
                    raise HttpError(400, f"part {part['partNumber']} of {oid} missing or etag mismatch")
                data += chunk
            self.lfs_put(oid, None, data)
            for key in [k for k in self.parts if k[0] == oid]:
                del self.parts[key]

    def lfs_verify(self, oid: str, body: dict) -> None:
        blob = self.blobs.get("sha256:" + oid)
        if blob is None or len(blob) != int(body["size"]):
            raise HttpError(404, f"object {oid} not uploaded")

    def commit(self, repo_id: str, revision: str, lines: list[dict], auth: str | None) -> dict:
        repo = self._repo(repo_id, auth, write=True)
        branch = unquote(revision)
        if branch not in repo.branches:
            raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HttpError(400, "commit header with a summary is required")
        with self.lock:
            head = repo.commits[repo.branches[branch]]
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HttpError(412, f"parentCommit {header['parentCommit']} is not the head of {branch} ({head.oid})")
            files = dict(head.files)
            # Validate everything before changing anything: a commit applies entirely or not at all.
            for ln in lines:
                key, v = ln["key"], ln.get("value", {})
                if key == "file":
                    if v.get("encoding") != "base64":
                        raise HttpError(400, "only base64 inline files are supported")
                    files[v["path"]] = self._store_inline(base64.b64decode(v["content"]))
                elif key == "lfsFile":
                    blob = self.blobs.get("sha256:" + v["oid"])
                    if blob is None:
                        raise HttpError(422, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                    files[v["path"]] = self._lfs_entry(v["oid"], len(blob))
                elif key == "deletedFile":
                    if v["path"] not in files:
                        raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[v["path"]]
                elif key == "deletedFolder":
                    prefix = v["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                elif key != "header":
                    raise HttpError(400, f"unknown commit operation {key!r}")
            c = self._new_commit(repo, head, files, header["summary"], header.get("description", ""))
            repo.branches[branch] = c.oid
            for path in [p for p in self.corrupt_paths if p in files and p in self._paths_of(lines)]:
                self.corrupt_paths.discard(path)
                self.flip_byte(repo_id, path, c.oid)
        return {
            "commitUrl": f"{self.endpoint}/{repo_id}/commit/{c.oid}",
            "commitOid": c.oid,
            "pullRequestUrl": None,
            "success": True,
        }

    @staticmethod
    def _paths_of(lines: list[dict]) -> set[str]:
        return {ln["value"]["path"] for ln in lines if ln["key"] in ("file", "lfsFile")}

    def create_tag(self, repo_id: str, revision: str, body: dict, auth: str | None) -> dict:
        repo = self._repo(repo_id, auth, write=True)
        with self.lock:
            c = self._commit(repo, revision)
            if body["tag"] in repo.tags:
                raise HttpError(409, f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = c.oid
        return {"name": body["tag"], "ref": f"refs/tags/{body['tag']}", "targetCommit": c.oid}

    def resolve(self, repo_id: str, revision: str, path: str, auth: str | None) -> tuple[Commit, Entry]:
        repo = self._repo(repo_id, auth)
        c = self._commit(repo, revision)
        e = c.files.get(path)
        if e is None:
            raise HttpError(404, "Entry not found", "EntryNotFound", body={"_commit": c.oid})
        return c, e


# Route table: (method, regex, kind). Repo ids are "namespace/name"; the handler turns them into keys.
_R = r"(?P<repo>[^/]+/[^/]+)"
_T = r"(?P<rtype>model|dataset)s"  # /api/models/..., /api/datasets/...
_W = r"(?:(?P<wtype>dataset)s/)?"  # web paths: /{repo}/... for a model, /datasets/{repo}/... for a dataset
ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),  # every huggingface_hub 1.33 process asks, once
    ("GET", rf"/api/{_T}/{_R}/xet-write-token/(?P<rev>[^/]+)", "xet_token"),
    ("GET", rf"/api/{_T}/{_R}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("POST", rf"/api/{_T}/{_R}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("GET", rf"/api/{_T}/{_R}/refs", "refs"),
    ("GET", rf"/api/{_T}/{_R}/commits/(?P<rev>[^/]+)", "commits"),
    ("POST", rf"/api/{_T}/{_R}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{_T}/{_R}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/{_T}/{_R}/tag/(?P<rev>[^/]+)", "tag"),
    ("GET", rf"/api/{_T}/{_R}/revision/(?P<rev>[^/]+)", "info"),
    ("GET", rf"/api/{_T}/{_R}", "info"),
    ("POST", rf"/{_W}{_R}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/upload/(?P<oid>[0-9a-f]{64})/part/(?P<n>\d+)", "lfs_part"),
    ("PUT", r"/_lfs/upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("POST", r"/_lfs/upload/(?P<oid>[0-9a-f]{64})", "lfs_complete"),
    ("POST", r"/_lfs/verify/(?P<oid>[0-9a-f]{64})", "lfs_verify"),
    ("GET", rf"/{_W}{_R}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{_W}{_R}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve_head"),
]
ROUTES = [(m, re.compile(p + "$"), k) for m, p, k in ROUTES]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        status: int,
        body: bytes | dict | list | None = None,
        headers: dict | None = None,
        content_length: int | None = None,
    ) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        body = body or b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        raw = self._body()  # always drain the body: the connection is kept alive
        route = next(((k, m) for meth, rx, k in ROUTES if meth == self.command and (m := rx.match(url.path))), None)
        kind = route[0] if route else "unknown"
        record = {
            "method": self.command,
            "path": url.path,
            "kind": kind,
            "status": None,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        with hub.lock:
            hub.requests.append(record)
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

        def reply(status: int, body=None, headers=None, content_length=None):
            record["status"] = status
            self._send(status, body, headers, content_length)

        fault = hub._fault(kind)
        if fault and not fault["after"]:
            return reply(fault["status"], {"error": f"injected fault ({kind})"})
        if route is None:
            return reply(404, {"error": f"no route for {self.command} {url.path}"})
        if token is not None and hub.token is not None and token != hub.token:
            return reply(
                401,
                {"error": "Invalid credentials in Authorization header"},
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        g = {k: unquote(v) if isinstance(v, str) else v for k, v in route[1].groupdict().items()}
        if g.get("repo"):
            g["repo"] = hub.key(g.pop("rtype", None) or g.pop("wtype", None), g["repo"])
        query = parse_qs(url.query)
        try:
            status, body, headers, length = 200, None, {}, None
            if kind == "create_repo":
                body = hub.create_repo(json.loads(raw), token)
            elif kind == "validate_yaml":
                body = _validate_yaml(json.loads(raw).get("content", ""))
                status = 400 if body["errors"] else 200
            elif kind == "whoami":
                if not token:
                    raise HttpError(401, "Invalid credentials in Authorization header")
                body = {"type": "user", "name": hub.user, "auth": {"type": "access_token"}}
            elif kind == "agent_harnesses":
                body = {"standardEnvVars": [], "harnesses": {}}
            elif kind == "xet_token":
                raise HttpError(
                    501,
                    "this fake hub has no Xet storage: run the client with HF_HUB_DISABLE_XET=1 "
                    "or start the server with upload_mode='regular'",
                )
            elif kind == "info":
                body = hub.info(g["repo"], g.get("rev"), token)
            elif kind == "tree":
                rec = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                body = hub.tree(g["repo"], g["rev"], g.get("path") or "", rec, token)
            elif kind == "paths_info":
                form = parse_qs(raw.decode())
                body = hub.paths_info(g["repo"], g["rev"], form.get("paths", []), token)
            elif kind == "refs":
                body = hub.refs(g["repo"], token)
            elif kind == "commits":
                body = hub.commits(g["repo"], g["rev"], token)
            elif kind == "preupload":
                body = hub.preupload(g["repo"], g["rev"], json.loads(raw), token)
            elif kind == "commit":
                lines = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
                body = hub.commit(g["repo"], g["rev"], lines, token)
            elif kind == "tag":
                body = hub.create_tag(g["repo"], g["rev"], json.loads(raw), token)
            elif kind == "lfs_batch":
                body = hub.lfs_batch(g["repo"], json.loads(raw), token)
            elif kind == "lfs_upload":
                size = query.get("size", [None])[0]
                hub.lfs_put(g["oid"], int(size) if size else None, raw)
            elif kind == "lfs_part":
                headers["ETag"] = f'"{hub.lfs_put_part(g["oid"], int(g["n"]), raw)}"'
            elif kind == "lfs_complete":
                hub.lfs_complete(g["oid"], json.loads(raw))
                body = {"success": True}
            elif kind == "lfs_verify":
                hub.lfs_verify(g["oid"], json.loads(raw))
                body = {"success": True}
            elif kind in ("resolve", "resolve_head"):
                c, e = hub.resolve(g["repo"], g["rev"], g["path"], token)
                data = hub.blobs[e.key]
                headers = {
                    "ETag": f'"{e.sha256 or e.oid}"',
                    "X-Repo-Commit": c.oid,
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng:
                    start = int(rng.group(1))
                    end = int(rng.group(2)) if rng.group(2) else len(data) - 1
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start : end + 1], 206
                body = data
        except HttpError as err:
            hdrs = {}
            if err.code:
                hdrs["X-Error-Code"] = err.code
            if err.body and "_commit" in err.body:
                hdrs["X-Repo-Commit"] = err.body["_commit"]
            payload = {"error": err.message, **{k: v for k, v in (err.body or {}).items() if not k.startswith("_")}}
            return reply(err.status, payload, hdrs)
        if fault:  # after=True: the change is applied but the client never hears about it
            return reply(fault["status"], {"error": f"injected fault after applying ({kind})"})
        return reply(status, body, headers, length)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle


def _validate_yaml(content: str) -> dict:
    """The Hub checks README.md front matter; report YAML syntax errors the same way."""
    import yaml

    errors = []
    m = re.match(r"^---\n(.*?)\n---", content, re.S)
    if m:
        try:
            meta = yaml.safe_load(m.group(1))
            if meta is not None and not isinstance(meta, dict):
                errors.append({"message": "metadata must be a YAML mapping"})
        except yaml.YAMLError as exc:
            errors.append({"message": f"invalid YAML: {exc}"})
    return {"errors": errors, "warnings": []}
