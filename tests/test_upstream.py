"""Models served by another server: another llama-router on the tiny models, and a fake
upstream that fails on purpose (tests/fakeupstream.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from router import upstream
from router.catalog import ModelSpec
from router.control.table import Model
from tests.fakeupstream import OPENAI_ERROR, FakeUpstream
from tests.server import RouterProcess, free_port
from tests.test_flags import start_and_fail
from workers.errors import ApiError

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 1}


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def far(router: Callable[..., RouterProcess], models_dir: Path, tmp_path: Path) -> RouterProcess:
    """The upstream: a llama-router on the tiny models, and an embedding model."""
    preset = tmp_path / "far.ini"
    preset.write_text(
        f"[embedder]\nmodel = {models_dir / 'tiny-c.gguf'}\nembeddings = true\npooling = mean\n"
    )
    return router("--models-dir", str(models_dir), "--models-preset", str(preset))


def front(
    router: Callable[..., RouterProcess], tmp_path: Path, sections: str, *args: str
) -> RouterProcess:
    preset = tmp_path / "front.ini"
    preset.write_text(sections)
    return router("--models-preset", str(preset), "--upstream-check-seconds", "0.3", *args)


def listed_ids(server: RouterProcess) -> set[str]:
    return {entry["id"] for entry in server.get("/models").json()["data"]}


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def content(chunks: list[dict[str, Any]]) -> str:
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk.get("choices")]
    return "".join(delta.get("content") or "" for delta in deltas)


def test_an_upstream_serves_its_models_through_the_router(
    router: Callable[..., RouterProcess], far: RouterProcess, models_dir: Path, tmp_path: Path
) -> None:
    base = far.url + "/v1"
    sections = (
        f"[remote]\nupstream = {base}\nupstream-model = tiny-a\nalias = yonder\ntags = gpu\n\n"
        f"[vectors]\nupstream = {base}\nupstream-model = embedder\n"
    )
    here = front(
        router, tmp_path, sections, "--models-dir", str(models_dir), "--models-max", "1",
        "--upstream", f"far={base}",
    )  # fmt: skip
    remote = here.wait_status("remote", "loaded")
    assert remote["source"] == "upstream" and remote["aliases"] == ["yonder"]
    assert remote["tags"] == ["gpu"] and "reason" not in remote["status"]
    deadline = time.monotonic() + 10
    while not {"far/tiny-a", "far/tiny-b", "far/embedder", "vectors"} <= listed_ids(here):
        assert time.monotonic() < deadline, listed_ids(here)
        time.sleep(0.05)
    assert here.model("far/tiny-a")["status"]["value"] == "loaded"

    assert here.post("/models/load", {"model": "tiny-b"}).status_code == 200
    here.wait_status("tiny-b", "loaded")
    direct = far.post("/v1/chat/completions", {**CHAT, "model": "tiny-a"}).json()
    for name in ("remote", "yonder", "far/tiny-a"):
        answer = here.post("/v1/chat/completions", {**CHAT, "model": name})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"] == direct["choices"]
        assert "router;dur=" in answer.headers["server-timing"]
    streamed = here.post("/v1/chat/completions", {**CHAT, "model": "remote", "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert content(events(streamed.content.decode())) == direct["choices"][0]["message"]["content"]
    assert streamed.text.rstrip().endswith("data: [DONE]")
    prompt = {"prompt": "ab", "max_tokens": 4, "seed": 1}
    completion = here.post("/v1/completions", {**prompt, "model": "remote"})
    far_text = far.post("/v1/completions", {**prompt, "model": "tiny-a"}).json()["choices"][0]
    assert completion.status_code == 200
    assert completion.json()["choices"][0]["text"] == far_text["text"]
    vectors = here.post("/v1/embeddings", {"model": "vectors", "input": "hello"})
    assert vectors.status_code == 200 and len(vectors.json()["data"][0]["embedding"]) > 0

    # never loaded here: no worker, no count against --models-max, no eviction
    with_worker = [entry["id"] for entry in here.get("/models").json()["data"] if "pid" in entry]
    assert here.status("tiny-b") == "loaded" and with_worker == ["tiny-b"]
    for action in ("load", "unload"):
        refused = here.post(f"/models/{action}", {"model": "remote"})
        assert refused.status_code == 400 and base in refused.json()["error"]["message"]
    elsewhere = here.post("/tokenize", {"model": "remote", "content": "hi"})
    assert elsewhere.status_code == 400 and "remote" in elsewhere.json()["error"]["message"]

    far.stop()
    down = here.wait_status("remote", "unavailable", timeout=10)
    assert down["status"]["reason"]
    failed = here.post("/v1/chat/completions", {**CHAT, "model": "remote"})
    assert failed.status_code == 502 and "unreachable" in failed.json()["error"]["message"]


def test_a_session_of_an_upstream_model_resumes_and_stops(
    router: Callable[..., RouterProcess], far: RouterProcess, tmp_path: Path
) -> None:
    here = front(
        router, tmp_path, f"[remote]\nupstream = {far.url}/v1\nupstream-model = slow\n",
        "--http-workers", "2",
    )  # fmt: skip
    body = {**CHAT, "model": "remote", "stream": True, "max_tokens": 20}
    headers = {"X-Conversation-Id": "c1"}
    first = here.post("/v1/chat/completions", body, headers=headers)
    assert first.status_code == 200 and "id: " in first.text
    for _ in range(4):  # fresh connections: the replays come from either HTTP process
        replay = here.get("/v1/stream", params={"conv_id": "c1", "from": 0})
        assert replay.content == first.content
    [row] = here.post("/v1/streams/lookup", {"conversation_ids": ["c1"]}).json()
    assert row["is_done"] and row["total_bytes"] == len(first.content)

    endless = {**body, "max_tokens": 100_000, "logit_bias": {"2": -100}}
    with here.post(
        "/v1/chat/completions", endless, headers={"X-Conversation-Id": "c2"}, stream=True
    ) as started:
        next(started.iter_content(64))  # the session runs; the client goes
    time.sleep(0.5)  # long enough for a request cut with its client to have ended upstream
    assert far.get("/slots", params={"model": "slow"}).json()[0]["is_processing"]
    follow = here.get("/v1/stream", params={"conv_id": "c2", "from": 0}, stream=True)
    assert follow.status_code == 200 and next(follow.iter_content(64)).startswith(b"id: ")
    assert requests.delete(here.url + "/v1/stream", params={"conv_id": "c2"}).status_code == 204
    deadline = time.monotonic() + 5
    while far.get("/slots", params={"model": "slow"}).json()[0]["is_processing"]:
        assert time.monotonic() < deadline, "the upstream request was not stopped"
        time.sleep(0.05)
    follow.close()


def test_upstream_failures_reach_the_client_as_openai_errors(
    router: Callable[..., RouterProcess], fake: FakeUpstream, tmp_path: Path
) -> None:
    modes = ["ok", "hang", "error500", "error400", "cut", "endless"]
    sections = "".join(f"[{m}]\nupstream = {fake.base(m)}\nupstream-model = m\n" for m in modes)
    here = front(router, tmp_path, sections, "--timeout", "1", "--http-workers", "2")
    here.wait_status("ok", "loaded")

    def ask(model: str, **extra: Any) -> requests.Response:
        return here.post("/v1/chat/completions", {**CHAT, "model": model, **extra}, timeout=30)

    answer = ask("ok")
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "hi"
    path, sent, _ = fake.requests[-1]
    assert path == "/ok/v1/chat/completions" and sent["model"] == "m" and sent["seed"] == 1

    passed = ask("error400")
    assert passed.status_code == 400 and passed.json() == OPENAI_ERROR
    wrapped = ask("error500")
    assert wrapped.status_code == 500
    assert "the GPU caught fire" in wrapped.json()["error"]["message"]
    started = time.monotonic()
    silent = ask("hang")
    assert silent.status_code == 504 and time.monotonic() - started < 10

    cut = ask("cut", stream=True)
    assert cut.status_code == 200
    assert content(events(cut.text)) == "t0t1"
    assert "cut its answer" in events(cut.text)[-1]["error"]["message"]

    with here.post(
        "/v1/chat/completions", {**CHAT, "model": "endless", "stream": True}, stream=True
    ) as endless:
        next(endless.iter_content(16))
    assert fake.left.wait(5), "the upstream request went on after its client left"


def test_an_upstream_api_key_comes_from_the_environment_and_connections_are_reused(
    router: Callable[..., RouterProcess], fake: FakeUpstream, tmp_path: Path
) -> None:
    preset = tmp_path / "keyed.ini"
    preset.write_text(f"[keyed]\nupstream = {fake.base('ok')}\nupstream-api-key-env = FAKE_KEY\n")
    here = router("--models-preset", str(preset), env={"FAKE_KEY": "s3cret"})
    for _ in range(3):
        assert here.post("/v1/chat/completions", {**CHAT, "model": "keyed"}).status_code == 200
    assert len(set(fake.client_ports)) == 1  # one pooled connection, used again
    _, sent, headers = fake.requests[-1]
    assert sent["model"] == "keyed"  # upstream-model defaults to the section's name
    sent_headers = {k.lower(): v for k, v in headers.items()}
    assert sent_headers["authorization"] == "Bearer s3cret"
    assert sent_headers["accept-encoding"] == "identity"  # its bytes go on as they come


def test_connections_are_retried_before_the_first_byte_then_the_circuit_opens(
    router: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    port = free_port()
    here = front(router, tmp_path, f"[late]\nupstream = http://127.0.0.1:{port}/ok/v1\n")
    started: list[FakeUpstream] = []
    # refused at first: the retries, 0.1, 0.2 and 0.4 s apart, reach it
    timer = threading.Timer(0.15, lambda: started.append(FakeUpstream(port)))
    timer.start()
    answer = here.post("/v1/chat/completions", {**CHAT, "model": "late"})
    timer.join()
    started[0].close()
    assert answer.status_code == 200, answer.text

    for _ in range(3):  # nobody listens any more: each request fails after its retries
        failed = here.post("/v1/chat/completions", {**CHAT, "model": "late"})
        assert failed.status_code == 502
    began = time.monotonic()
    opened = here.post("/v1/chat/completions", {**CHAT, "model": "late"})
    assert opened.status_code == 503 and "keeps failing" in opened.json()["error"]["message"]
    assert time.monotonic() - began < 0.5  # refused at once, not tried


def test_an_open_circuit_lets_one_request_probe_after_its_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(upstream.time, "monotonic", lambda: now[0])
    breaker = upstream.Breaker()
    for _ in range(upstream.BREAKER_FAILURES):
        breaker.admit("b")
        breaker.failed()
    with pytest.raises(ApiError, match="keeps failing"):
        breaker.admit("b")
    now[0] += upstream.BREAKER_SECONDS
    breaker.admit("b")  # the probe
    with pytest.raises(ApiError):
        breaker.admit("b")  # only one while it runs
    breaker.failed()  # the server is still down: open again for a whole pause
    now[0] += upstream.BREAKER_SECONDS / 2
    with pytest.raises(ApiError):
        breaker.admit("b")
    now[0] += upstream.BREAKER_SECONDS
    breaker.admit("b")
    breaker.succeeded()  # back: closed
    breaker.admit("b")
    breaker.admit("b")


def test_an_upstream_is_named_as_a_url(tmp_path: Path) -> None:
    assert upstream.parse_upstream_server("far=http://x:1/v1?k=v") == upstream.UpstreamServer(
        "far", "http://x:1/v1?k=v"
    )
    assert upstream.parse_upstream_server("https://gpu-box:8000/v1/").prefix == "gpu-box"
    ran = start_and_fail("--upstream", "gpu-box:8000", cache=tmp_path)
    assert ran.returncode != 0 and "an upstream is http(s)://HOST" in ran.stderr


def test_an_upstream_model_is_loading_until_its_server_was_asked() -> None:
    target = upstream.UpstreamTarget("http://gpu-box:8000/v1", "m")
    model = Model(ModelSpec(id="remote", source="upstream", upstream=target))
    assert model.public_status == "loading"
    model.checked = True
    assert model.public_status == "loaded"
    model.unreachable = "connection refused"
    assert model.public_status == "unavailable"


def test_a_probe_whose_client_left_lets_the_next_request_probe(fake: FakeUpstream) -> None:
    async def scenario() -> None:
        client = upstream.UpstreamClient(timeout=30)
        target = upstream.UpstreamTarget(fake.base("hang"), "m")
        breaker = client._breakers.setdefault(target.base, upstream.Breaker())
        breaker.failures = upstream.BREAKER_FAILURES  # open, and its pause over

        async def ask() -> None:
            async with client.open(target, "m", "/v1/chat/completions", b'{"model": "m"}'):
                pass

        probe = asyncio.create_task(ask())
        await asyncio.sleep(0.3)
        assert breaker.probing
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert not breaker.probing  # else every request answered 503 from then on
        await client.close()

    asyncio.run(scenario())


def test_upstream_models_added_by_a_catalog_reload_are_checked(
    router: Callable[..., RouterProcess], fake: FakeUpstream, tmp_path: Path
) -> None:
    preset = tmp_path / "later.ini"
    preset.write_text("")
    here = router("--models-preset", str(preset), "--upstream-check-seconds", "0.3")
    preset.write_text(f"[later]\nupstream = {fake.base('ok')}\nupstream-model = m\n")
    assert "later" in {entry["id"] for entry in here.get("/models?reload=1").json()["data"]}
    here.wait_status("later", "loaded", timeout=5)
