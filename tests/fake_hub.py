"""A tiny Hugging Face Hub stand-in on a loopback port, for offline download tests.

It serves just what ``huggingface_hub.snapshot_download`` (2.x) asks for:

- ``GET /api/models/{repo}[/revision/{rev}]``: model info with ``sha`` (the
  commit) and ``siblings``;
- ``GET /api/models/{repo}/tree/{commit}``: the recursive file listing;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}``: file metadata
  (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and content.

Errors carry the ``X-Error-Code`` header the real Hub sends (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``), which
``huggingface_hub`` turns into its typed exceptions. Xet storage is never
advertised, so downloads are plain HTTP. The server binds 127.0.0.1 only and
shuts itself down after ``lifetime_s`` seconds if nobody stops it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RepoFiles = dict[str, bytes]

_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<filename>.+)$")


def commit_hash(repo_id: str, revision: str) -> str:
    """The fake 40-hex commit id of ``revision`` of ``repo_id``."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def git_blob_id(content: bytes) -> str:
    """The git object id of a file, which the Hub uses as ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """Serve in-memory repos over HTTP on 127.0.0.1 at a random free port.

    Args:
        repos: Repo id to {revision name: {file name: content}}; every repo
            needs a ``"main"`` revision.
        gated: Repo ids whose files answer 401 ``GatedRepo``.
        lifetime_s: The server stops by itself after this many seconds.

    Attributes:
        url: Base URL to use as ``HF_ENDPOINT``.
        requests: ``(method, path)`` of every request served, in order.
    """

    def __init__(self, repos: dict[str, dict[str, RepoFiles]], gated: set[str] | None = None,
                 lifetime_s: float = 60.0):
        self.repos = repos
        self.gated = gated or set()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub._handle(self, send_body=True)

            def do_HEAD(self) -> None:
                hub._handle(self, send_body=False)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._deadline = threading.Timer(lifetime_s, self.stop)
        self._deadline.daemon = True
        self._started = False
        self._stopped = False

    def start(self) -> FakeHub:
        self._started = True
        self._thread.start()
        self._deadline.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._deadline.cancel()
        if self._started:  # shutdown() waits for serve_forever, which must be running
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def paths_requested(self, method: str | None = None) -> list[str]:
        """Paths of the requests served (optionally only those of one HTTP method)."""
        with self._lock:
            return [path for m, path in self.requests if method is None or m == method]

    # -- request handling -------------------------------------------------

    def _find(self, repo_id: str, revision: str) -> tuple[str, RepoFiles] | None:
        """(commit, files) of a revision given by name or by commit hash."""
        for name, files in self.repos[repo_id].items():
            commit = commit_hash(repo_id, name)
            if revision in (name, commit):
                return commit, files
        return None

    def _handle(self, request: BaseHTTPRequestHandler, send_body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.requests.append((request.command, path))
        for pattern, route in ((_TREE, self._tree), (_INFO, self._info), (_RESOLVE, self._resolve)):
            match = pattern.match(path)
            if match:
                fields = match.groupdict()
                repo_id = fields.pop("repo")
                if repo_id not in self.repos:
                    return _reply(request, 404, b'{"error":"Repository not found"}', send_body,
                                  {"X-Error-Code": "RepoNotFound"})
                found = self._find(repo_id, fields.pop("rev") or "main")
                if found is None:
                    return _reply(request, 404, b'{"error":"Invalid rev id"}', send_body,
                                  {"X-Error-Code": "RevisionNotFound"})
                return route(request, send_body, repo_id, *found, **fields)
        _reply(request, 404, b'{"error":"Not found"}', send_body)

    def _info(self, request: BaseHTTPRequestHandler, send_body: bool, repo_id: str, commit: str,
              files: RepoFiles) -> None:
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": False,
            "gated": "auto" if repo_id in self.gated else False,
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }
        _reply(request, 200, json.dumps(info).encode(), send_body, {"Content-Type": "application/json"})

    def _tree(self, request: BaseHTTPRequestHandler, send_body: bool, repo_id: str, commit: str,
              files: RepoFiles) -> None:
        tree = [
            {"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
            for name, content in sorted(files.items())
        ]
        _reply(request, 200, json.dumps(tree).encode(), send_body, {"Content-Type": "application/json"})

    def _resolve(self, request: BaseHTTPRequestHandler, send_body: bool, repo_id: str, commit: str,
                 files: RepoFiles, filename: str) -> None:
        headers = {"X-Repo-Commit": commit}
        if repo_id in self.gated:
            return _reply(request, 401, b'{"error":"Access to this model is restricted"}', send_body,
                          {**headers, "X-Error-Code": "GatedRepo"})
        if filename not in files:
            return _reply(request, 404, b'{"error":"Entry not found"}', send_body,
                          {**headers, "X-Error-Code": "EntryNotFound"})
        content = files[filename]
        headers["ETag"] = f'"{git_blob_id(content)}"'
        _reply(request, 200, content, send_body, {**headers, "Content-Type": "application/octet-stream"})


def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes, send_body: bool,
           headers: dict[str, str] | None = None) -> None:
    request.send_response(status)
    for key, value in (headers or {}).items():
        request.send_header(key, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if send_body:
        request.wfile.write(body)
