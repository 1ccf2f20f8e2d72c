"""Exposure on a LAN: API keys, CORS, bounded waiting."""

from __future__ import annotations

from pathlib import Path

import requests

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


def test_waiting_requests_per_model_are_bounded(router, models_dir: Path) -> None:
    server = router(
        "--models-dir", str(models_dir), "--models-max", "1", "--max-waiting-per-model", "1"
    )
    hog = busy(server, tokens=1500)  # the only slot stays taken while the line fills
    waiter = Call(server, {"model": "tiny-a", "prompt": "x", "max_tokens": 2})
    refused = None
    for _ in range(100):  # until the waiter has queued; an earlier try just gives up its place
        try:
            reply = requests.post(
                server.url + "/v1/completions",
                json={"model": "tiny-a", "prompt": "x", "max_tokens": 2},
                timeout=0.3,
            )
        except requests.Timeout:
            continue
        if reply.status_code == 503:
            refused = reply
            break
    assert refused is not None, "a second waiter was never refused"
    assert "too many requests waiting" in refused.json()["error"]["message"]
    assert hog.result() == 200
    # the background waiter may itself have found the line taken by one of the early tries
    assert waiter.result() in (200, 503)
    after = server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2})
    assert after.status_code == 200
