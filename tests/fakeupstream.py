"""An OpenAI-compatible server on 127.0.0.1 that fails on purpose, for the upstream tests.

The first part of a request's path picks the behaviour (`{url}/MODE/v1` is the base URL):
`ok` answers, `hang` never answers, `error500` answers 500 in plain text, `error400` answers an
OpenAI error body, `cut` sends two events and drops the connection, `endless` streams an event
every 50 ms until the client leaves. Every mode lists one model, `m`, on its models route.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OPENAI_ERROR = {"error": {"code": 400, "message": "the upstream's own words", "type": "bad"}}


def event(text: str) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class FakeUpstream:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, object], dict[str, str]]] = []
        self.client_ports: list[int] = []  # per request: a port seen again, a reused connection
        self._connections: set[socket.socket] = set()
        self.left = threading.Event()  # an `endless` client went away
        self.release = threading.Event()  # ends the `hang` waits
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())

            def setup(self) -> None:
                super().setup()
                upstream._connections.add(self.connection)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                upstream.requests.append((self.path, body, dict(self.headers)))
                upstream.client_ports.append(self.client_address[1])
                upstream.serve(self, self.path.split("/")[1])

            def _send(self, status: int, body: bytes, media: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", media)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def base(self, mode: str) -> str:
        return f"{self.url}/{mode}/v1"

    def serve(self, handler: BaseHTTPRequestHandler, mode: str) -> None:
        send = handler._send  # type: ignore[attr-defined]
        if mode == "hang":
            self.release.wait(60)
            handler.close_connection = True
        elif mode == "error500":
            send(500, b"the GPU caught fire", "text/plain")
        elif mode == "error400":
            send(400, json.dumps(OPENAI_ERROR).encode())
        elif mode == "ok":
            answer = {"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}
            send(200, json.dumps(answer).encode())
        elif mode in ("cut", "endless"):
            handler.send_response(200)
            handler.send_header("content-type", "text/event-stream")
            handler.send_header("transfer-encoding", "chunked")
            handler.end_headers()
            self._stream(handler, mode)

    def _stream(self, handler: BaseHTTPRequestHandler, mode: str) -> None:
        """Chunked, so that a cut (no last chunk) is an error to the reader, not an end."""
        handler.close_connection = True
        try:
            for index in range(2 if mode == "cut" else 10_000):
                data = event(f"t{index}")
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            self.left.set()

    def close(self) -> None:
        """Stop listening, and end the connections kept alive."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
