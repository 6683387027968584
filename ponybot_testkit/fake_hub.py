"""A Hugging Face hub the tests own: real `huggingface_hub` code downloads from it over loopback
(`HF_ENDPOINT`), nothing leaves the machine.

It serves what `snapshot_download` asks, the way huggingface.co answers (read from
huggingface_hub 2.x's `hf_api.py`, `file_download.py` and `utils/_http.py`):

* `GET /api/models/{repo}[/revision/{rev}]`: the repo's info with its commit `sha`;
  unknown repo or revision -> 404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound`.
* `GET /api/models/{repo}/tree/{rev}?recursive=true`: every file with its size, git blob id and,
  for large ("LFS") files, the sha256.
* `HEAD|GET /{repo}/resolve/{rev}/{path}`: small files directly, with `ETag` (the blob id) and
  `X-Repo-Commit`; LFS files as a 302 to a "CDN" on another origin (another port) carrying
  `X-Linked-Etag` (the sha256) and `X-Linked-Size`, which is where the client stops its HEAD.
  The CDN honours `Range`, so an interrupted download resumes.

Faults: `drop_after(path, n)` closes the connection after `n` bytes of that file, once.
Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pth")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class _Repo:
    files: dict[str, bytes]
    commit: str
    branches: dict[str, str] = field(default_factory=dict)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[Request] = []
        self._drops: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.cdn_port = 0

    # --- the world ----------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish `files` (repo path -> content) as `repo_id` on branch main; returns the
        commit sha."""
        commit = hashlib.sha1(repr(sorted((p, _blob_id(d)) for p, d in files.items()))
                              .encode()).hexdigest()
        self.repos[repo_id] = _Repo(files=dict(files), commit=commit, branches={"main": commit})
        return commit

    @staticmethod
    def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
        """Every file under `folder` as repo paths (for `add_repo`)."""
        return {prefix + p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    def drop_after(self, path: str, n_bytes: int) -> None:
        """The next download of `path` breaks off after `n_bytes` (a dropped connection)."""
        self._drops[path] = n_bytes

    def downloads(self) -> list[str]:
        """Repo paths whose content was sent (GET of a small file or of an LFS object)."""
        sent = []
        for request in self.requests:
            if request.method != "GET":
                continue
            if "/resolve/" in request.path and not _is_lfs(request.path):
                sent.append(request.path.split("/resolve/", 1)[1].split("/", 1)[1])
            elif request.path.startswith("/cdn/"):
                sent.append(request.path.split("/", 3)[3])
        return sent

    # --- serving ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        hub = web.TCPSite(self._runner, "127.0.0.1", 0)
        cdn = web.TCPSite(self._runner, "127.0.0.1", 0)
        await hub.start()
        await cdn.start()
        # The ports the system chose (port 0 asked), in the order the sites started.
        hub_address, cdn_address = self._runner.addresses
        self.port, self.cdn_port = int(hub_address[1]), int(cdn_address[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Request(request.method, request.path, request.headers.get("Range")))
        parts = request.path.strip("/").split("/")
        if parts[0] == "cdn":
            return await self._cdn(request, parts)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            if not rest:
                return self._info(repo_id, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, rest[1])
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(request, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        return _error(404, "Entry not found", "EntryNotFound")

    def _commit(self, repo_id: str, revision: str) -> tuple[_Repo, str]:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _NotFound(f"Repository {repo_id} not found", "RepoNotFound")
        commit = repo.branches.get(revision, revision if revision == repo.commit else None)
        if commit is None:
            raise _NotFound(f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit

    def _info(self, repo_id: str, revision: str) -> web.Response:
        try:
            repo, commit = self._commit(repo_id, revision)
        except _NotFound as exc:
            return exc.response()
        return _json({"id": repo_id, "sha": commit, "private": False, "gated": False,
                      "library_name": "diffusers", "tags": ["diffusers", "text-to-image"],
                      "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, repo_id: str, revision: str) -> web.Response:
        try:
            repo, _ = self._commit(repo_id, revision)
        except _NotFound as exc:
            return exc.response()
        entries: list[dict[str, object]] = []
        folders = sorted({"/".join(p.split("/")[:i]) for p in repo.files
                          for i in range(1, p.count("/") + 1)})
        entries += [{"type": "directory", "oid": _blob_id(f.encode()), "path": f}
                    for f in folders]
        for path, data in sorted(repo.files.items()):
            entry: dict[str, object] = {"type": "file", "oid": _blob_id(data), "size": len(data),
                                        "path": path}
            if _is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
            entries.append(entry)
        return _json(entries)

    def _resolve(self, request: web.Request, repo_id: str, revision: str,
                 path: str) -> web.StreamResponse:
        try:
            repo, commit = self._commit(repo_id, revision)
        except _NotFound as exc:
            return exc.response()
        data = repo.files.get(path)
        if data is None:
            return _error(404, "Entry not found", "EntryNotFound", commit=commit)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{_blob_id(data)}"'}
        if _is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({
                "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                "Location": f"http://127.0.0.1:{self.cdn_port}/cdn/{sha}/{path}",
            })  # fmt: skip
            return web.Response(status=302, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=data, headers=headers)

    async def _cdn(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        path = "/".join(parts[2:])
        data = next((d for repo in self.repos.values() for p, d in repo.files.items()
                     if p == path and hashlib.sha256(d).hexdigest() == parts[1]), None)
        if data is None:
            return web.Response(status=404)
        start = 0
        wanted = request.headers.get("Range")
        if wanted:  # "bytes=N-"
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        body = data[start:]
        status, headers = (206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}) \
            if start else (200, {})
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        cut = self._drops.pop(path, None)
        if cut is None:
            return web.Response(status=status, body=body, headers=headers)
        # A connection dropped mid-file: the declared length never arrives.
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(body[:cut])
        assert request.transport is not None
        request.transport.close()
        return response


class _NotFound(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    def response(self) -> web.Response:
        return _error(404, str(self), self.code)


def _json(payload: object) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), content_type="application/json")


def _error(status: int, message: str, code: str, commit: str | None = None) -> web.Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit:
        headers["X-Repo-Commit"] = commit
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json", headers=headers)
