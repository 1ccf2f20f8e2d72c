"""A Hugging Face compatible hub on 127.0.0.1: branches, repo listings, files with Range (and
HEAD, which llama-server asks first), planned failures."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

CHUNK = 32 * 1024
# A repo of two tiny models, as the `hub` fixture (tests/conftest.py) serves it.
TINY_REPO = "acme/tiny-GGUF"


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
                hub.serve(self)

            def do_HEAD(self) -> None:
                hub.serve(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, path: str, data: bytes, sha256: str | None = None) -> None:
        key = f"{repo}/{path}"
        self.files[key] = data
        self.listed_sha[key] = sha256 or hashlib.sha256(data).hexdigest()

    def commit(self, repo: str) -> str:
        """The commit of `main`: it changes whenever a file of the repo does."""
        digest = hashlib.sha1(repo.encode())
        for key in sorted(self.files):
            if key.startswith(repo + "/"):
                digest.update(key.encode() + self.listed_sha[key].encode())
        return digest.hexdigest()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, request: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = unquote(urlparse(request.path).path)
        if path.startswith("/api/models/") and path.endswith("/refs"):
            repo = path[len("/api/models/") : -len("/refs")]
            if not self._has(repo):
                return _reply(request, 404, b'{"error": "Repository not found"}')
            main = {"name": "main", "ref": "refs/heads/main", "targetCommit": self.commit(repo)}
            return _reply(request, 200, json.dumps({"branches": [main], "tags": []}).encode())
        if path.startswith("/api/models/") and "/tree/" in path:
            repo = path[len("/api/models/") :].split("/tree/")[0]
            if not self._has(repo):
                return _reply(request, 404, b'{"error": "Repository not found"}')
            return _reply(request, 200, json.dumps(self._listing(repo)).encode())
        if "/resolve/" in path:
            repo, _, rest = path.strip("/").partition("/resolve/")
            name = rest.partition("/")[2]  # after the revision: main or a commit
            return self._send_file(request, f"{repo}/{name}", head)
        if path.startswith("/direct/"):
            return self._send_file(request, path[len("/direct/") :], head)
        _reply(request, 404, b"not found")

    def _has(self, repo: str) -> bool:
        return any(key.startswith(repo + "/") for key in self.files)

    def _listing(self, repo: str) -> list[dict]:
        listing = []
        for key, data in sorted(self.files.items()):
            if not key.startswith(repo + "/"):
                continue
            entry: dict = {"type": "file", "path": key[len(repo) + 1 :], "size": len(data)}
            if key.endswith(".gguf"):
                entry["lfs"] = {"oid": self.listed_sha[key], "size": len(data)}
            else:  # small files are plain git blobs, with their git oid
                entry["oid"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            listing.append(entry)
        return listing

    def _send_file(self, request: BaseHTTPRequestHandler, key: str, head: bool) -> None:
        data = self.files.get(key)
        if data is None:
            return _reply(request, 404, b"not found")
        if head:  # llama.cpp's downloader asks for the size and the ETag first
            request.send_response(200)
            request.send_header("Content-Length", str(len(data)))
            request.send_header("Accept-Ranges", "bytes")
            request.send_header("ETag", f'"{self.listed_sha[key]}"')
            request.end_headers()
            return
        wanted = request.headers.get("Range")
        self.ranges.append((key, wanted))
        start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
        request.send_response(206 if wanted else 200)
        request.send_header("Content-Length", str(len(data) - start))
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("ETag", f'"{self.listed_sha[key]}"')
        if wanted:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
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
