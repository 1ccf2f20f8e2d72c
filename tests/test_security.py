"""Exposure on a LAN: API keys, CORS, bounded waiting."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import psutil
import requests

from tests.server import RouterProcess
from tests.test_scheduling import Call, busy

CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_api_keys_guard_every_route_but_the_public_ones(
    router, models_dir: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("filed-key\n\n")
    server = router(
        "--models-dir", str(models_dir), "--api-key", "k1,k2", "--api-key-file", str(key_file)
    )
    assert server.get("/health").status_code == 200
    assert server.get("/v1/models").status_code == 200
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/props"),
        ("GET", "/models/sse"),
        ("GET", "/v1/stream?conv_id=x"),
        ("DELETE", "/v1/stream?conv_id=x"),
        ("POST", "/v1/streams/lookup"),
        ("POST", "/models"),
        ("DELETE", "/models?model=tiny-a"),
        ("POST", "/models/load"),
    ]:
        reply = requests.request(method, server.url + path, json=CHAT, timeout=10)
        assert reply.status_code == 401, (method, path)
        assert reply.json()["error"] == {
            "code": 401,
            "message": "Invalid API Key",
            "type": "authentication_error",
        }
    wrong = server.post("/v1/chat/completions", CHAT, headers={"Authorization": "Bearer k3"})
    assert wrong.status_code == 401
    for headers in (
        {"Authorization": "Bearer k2"},
        {"authorization": "bearer k1"},
        {"X-Api-Key": "filed-key"},
        {"Authorization": "Bearer stale", "X-Api-Key": "k1"},  # one valid key of two is enough
    ):
        assert server.post("/v1/chat/completions", CHAT, headers=headers).status_code == 200


def test_cors_is_same_origin_unless_allowed(router, models_dir: Path) -> None:
    closed = router("--models-dir", str(models_dir))
    reply = closed.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in reply.headers
    opened = router("--models-dir", str(models_dir), "--cors-origins", "http://ui.lan")
    allowed = opened.get("/health", headers={"Origin": "http://ui.lan"})
    assert allowed.headers["access-control-allow-origin"] == "http://ui.lan"
    refused = opened.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in refused.headers
    wildcard = router("--models-dir", str(models_dir), "--cors-origins", "*")
    reply = wildcard.get("/health", headers={"Origin": "http://any.where"})
    assert reply.headers["access-control-allow-origin"] == "*"
    assert reply.headers.get("access-control-allow-credentials") != "true"


def test_cors_answers_as_llama_server(router, models_dir: Path) -> None:
    """`localhost` is every local page on any port; every OPTIONS request gets 200, and an
    origin that is not allowed simply gets no allow header."""
    server = router("--models-dir", str(models_dir), "--cors-origins", "localhost")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x"}
    for origin in ("http://localhost", "http://127.0.0.1:3000", "http://[::1]:8080"):
        reply = requests.options(
            server.url + "/completions", headers={"Origin": origin, **preflight}, timeout=10
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == origin
        assert "POST" in reply.headers["access-control-allow-methods"]
        assert reply.headers["access-control-allow-credentials"] == "true"
    for origin in ("http://evil.com", "http://localhost.evil.com", "http://notlocalhost"):
        reply = requests.options(
            server.url + "/completions", headers={"Origin": origin, **preflight}, timeout=10
        )
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers
    plain = requests.options(server.url + "/v1/models", timeout=10)
    assert plain.status_code == 200
    simple = server.get("/health", headers={"Origin": "http://localhost:5173"})
    assert simple.headers["access-control-allow-origin"] == "http://localhost:5173"
    # names cased as llama-server writes them: its own tests read them from a plain dict
    assert dict(simple.headers)["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert dict(simple.headers)["Content-Type"] == "application/json"


def test_host_takes_several_addresses(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--host", "127.0.0.1,127.0.0.2")
    for address in ("127.0.0.1", "127.0.0.2"):
        reply = requests.get(f"http://{address}:{server.port}/health", timeout=10)
        assert reply.status_code == 200


def test_waiting_requests_per_model_are_bounded(router, models_dir: Path) -> None:
    server = router(
        "--models-dir", str(models_dir), "--models-max", "1", "--max-waiting-per-model", "1"
    )
    hog = busy(server, tokens=1500)  # the only slot stays taken while the line fills
    callers = [Call(server, {"model": "tiny-a", "prompt": "x", "max_tokens": 2}) for _ in range(3)]
    refused = [call for call in callers if call.result() == 503]
    assert len(refused) == 2, [call.status for call in callers]  # one waits, the others may not
    assert all("too many requests waiting" in call.text for call in refused)
    assert hog.result() == 200
    assert max(call.finished_at for call in refused) < hog.finished_at  # refused at once
    assert [call.status for call in callers].count(200) == 1  # the one that waited got served


def raw_exchange(server: RouterProcess, head: bytes) -> bytes:
    """Send a request head as a hostile client would, all at once, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sender = threading.Thread(target=_send_ignoring_reset, args=(sock, head))
        sender.start()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sender.join()
        return answer


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the router may hang up before the last byte
        sock.sendall(data)


def test_request_heads_past_the_limit_get_431_and_are_never_buffered(router, models_dir) -> None:
    server = router("--models-dir", str(models_dir), "--max-header-bytes", "8192")
    assert server.get("/health", headers={"X-Pad": "a" * 7000}).status_code == 200
    large = server.get("/health", headers={"X-Pad": "a" * 9000})
    assert large.status_code == 431
    assert large.json()["error"] == {
        "code": 431,
        "message": "request headers are larger than 8192 bytes",
        "type": "invalid_request_error",
    }
    many = server.get("/health", headers={f"X-Pad-{n}": "a" for n in range(1000)})
    assert many.status_code == 431
    assert server.get("/health?" + "a" * 9000).status_code == 431
    rss = psutil.Process(server.proc.pid).memory_info().rss
    endless = raw_exchange(
        server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 50_000_000
    )
    assert endless.startswith(b"HTTP/1.1 431 ")
    assert psutil.Process(server.proc.pid).memory_info().rss - rss < 8_000_000
    assert server.get("/health").status_code == 200
