"""A Hugging Face compatible hub on 127.0.0.1: repo listings, files with Range, planned failures.

It answers what llama-router's downloader asks (`/api/models/{repo}/tree/main`, `/{repo}/resolve/
main/{file}`) and what llama.cpp's asks too: `/api/models/{repo}/refs` for the commit of `main`,
the tree and the files at that commit, and a HEAD of each file for its size and ETag.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

CHUNK = 32 * 1024


def commit_of(repo: str) -> str:
    """A stable 40-hex commit id per repo (llama.cpp checks the shape)."""
    return hashlib.sha1(repo.encode()).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.listed_sha: dict[str, str] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.fail_once_after: dict[str, int] = {}
        self.seconds_per_chunk = 0.0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub.serve(self, with_body=True)

            def do_HEAD(self) -> None:
                hub.serve(self, with_body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, path: str, data: bytes, sha256: str | None = None) -> None:
        key = f"{repo}/{path}"
        self.files[key] = data
        self.listed_sha[key] = sha256 or hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, request: BaseHTTPRequestHandler, with_body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        parts = path.strip("/").split("/")
        if path.startswith("/api/models/"):
            return self._api(request, parts[2:])
        if len(parts) > 4 and parts[2] == "resolve":  # /{owner}/{name}/resolve/{rev}/{file}
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            return self._send_file(request, f"{repo}/{name}", with_body)
        if path.startswith("/direct/"):
            return self._send_file(request, path[len("/direct/") :], with_body)
        _reply(request, 404, b"not found")

    def _api(self, request: BaseHTTPRequestHandler, parts: list[str]) -> None:
        """`{owner}/{name}/refs` and `{owner}/{name}/tree/{rev}` (any rev: one commit per repo)."""
        repo = "/".join(parts[:2])
        if not any(key.startswith(repo + "/") for key in self.files):
            return _reply(request, 404, b'{"error": "Repository not found"}')
        if parts[2:3] == ["refs"]:
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": commit_of(repo)}
            return _reply(request, 200, json.dumps({"branches": [branch]}).encode())
        if parts[2:3] == ["tree"]:
            return _reply(request, 200, json.dumps(self._listing(repo)).encode())
        _reply(request, 404, b'{"error": "not found"}')

    def _listing(self, repo: str) -> list[dict[str, object]]:
        return [
            {
                "type": "file",
                "path": key[len(repo) + 1 :],
                "size": len(data),
                "oid": hashlib.sha1(data).hexdigest(),
                "lfs": {"oid": self.listed_sha[key], "size": len(data)},
            }
            for key, data in self.files.items()
            if key.startswith(repo + "/")
        ]

    def _send_file(self, request: BaseHTTPRequestHandler, key: str, with_body: bool) -> None:
        data = self.files.get(key)
        if data is None:
            return _reply(request, 404, b"not found")
        wanted = request.headers.get("Range") if with_body else None
        if with_body:
            self.ranges.append((key, wanted))
        start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
        request.send_response(206 if wanted else 200)
        request.send_header("Content-Length", str(len(data) - start))
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("ETag", f'"{self.listed_sha[key]}"')
        if wanted:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if not with_body:
            return
        cut = self.fail_once_after.pop(key, None)
        end = len(data) if cut is None else start + cut
        for offset in range(start, end, CHUNK):
            try:
                request.wfile.write(data[offset : min(offset + CHUNK, end)])
                request.wfile.flush()
            except OSError:
                return
            time.sleep(self.seconds_per_chunk)
        if cut is not None:
            request.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
            request.close_connection = True


def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)
