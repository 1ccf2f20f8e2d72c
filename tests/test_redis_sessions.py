"""Sessions shared by replicas (`--sessions-redis`): two routers over one real redis-server, a
session made on one read, followed, looked up and stopped on the other."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests

from router.control.redis_mirror import PASS_BYTES, mirror_entries
from router.http.remote_sessions import PAGE
from tests.redis_server import RedisServer
from tests.server import RouterProcess
from tests.test_streams import CONV, finish, lookup, replay, start_session, wait_done
from workers.ring import sweep_stale_segments


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def replicas(router, models_dir: Path, redis_server: RedisServer) -> tuple[RouterProcess, ...]:
    args = ("--models-dir", str(models_dir), "--sessions-redis", redis_server.url)
    return router(*args), router(*args)


def delete(server: RouterProcess, conv: str = CONV) -> requests.Response:
    return requests.delete(server.url + f"/v1/stream?conv_id={quote(conv, safe='')}", timeout=10)


def wait_replay(server: RouterProcess, conv: str = CONV, stream: bool = False) -> requests.Response:
    """The copy reaches Redis a moment after the owner's ring (and says when its model is
    loaded)."""
    deadline = time.monotonic() + 10
    while (reply := replay(server, conv, stream=stream)).status_code != 200:
        assert time.monotonic() < deadline, f"{reply.status_code} {reply.text}"
        time.sleep(0.05)
    return reply


def error_of(event: bytes) -> dict:
    return json.loads(event[len(b"data: ") :])["error"]


def test_a_session_replays_byte_identically_on_another_replica(replicas) -> None:
    a, b = replicas
    original = start_session(a, tokens=60).content
    assert original.endswith(b"data: [DONE]\n\n")
    row = wait_done(b, timeout=10)
    assert row == lookup(a, CONV)[0]
    assert replay(b).content == original
    assert replay(b, offset=100).content == original[100:]
    middle = int(re.findall(rb"id: (\d+)", original)[10])
    resumed = replay(b, headers={"Last-Event-ID": str(middle)}).content
    assert resumed == original[middle:]
    assert replay(b, offset=len(original)).content == b""
    too_far = replay(b, offset=len(original) + 1)
    assert too_far.status_code == 400
    assert replay(b, conv="nobody").status_code == 404


def test_lookup_on_another_replica_matches_suffixed_ids(replicas) -> None:
    a, b = replicas
    for conv in ("alpha", "alpha::1", "alphabet"):
        finish(start_session(a, conv=conv, model="tiny-a", tokens=3))
    finish(start_session(b, conv="alpha::2", model="tiny-a", tokens=3))
    deadline = time.monotonic() + 10
    while len(ids := sorted(row["conversation_id"] for row in lookup(b, "alpha"))) < 3:
        assert time.monotonic() < deadline, ids
        time.sleep(0.05)
    assert ids == ["alpha", "alpha::1", "alpha::2"]


def test_a_small_buffer_loses_old_offsets_on_every_replica(
    router, models_dir: Path, redis_server: RedisServer
) -> None:
    args = ("--models-dir", str(models_dir), "--sessions-redis", redis_server.url)
    a = router(*args, "--stream-buffer-bytes", "4096")
    b = router(*args)
    original = start_session(a, tokens=200).content
    wait_done(b, timeout=10)
    lost = replay(b, offset=0)
    assert lost.status_code == 400
    assert lost.json()["error"]["message"] == "Stream offset lost, please restart"
    tail = replay(b, offset=len(original) - 100)
    assert tail.status_code == 200 and tail.content == original[-100:]


def test_another_replica_follows_live_and_stops_the_session(replicas) -> None:
    a, b = replicas
    start_session(a, tokens=3000).close()
    a.wait_status("slow", "loaded")
    local = replay(a, stream=True).iter_lines()
    lines = wait_replay(b, stream=True).iter_lines()
    first = [next(lines) for _ in range(12)]  # the live tail, through Redis
    assert first[0].startswith(b"id: ")
    assert not lookup(b, CONV)[0]["is_done"]
    assert delete(b).status_code == 204
    stopped = time.monotonic()
    rest = list(local)  # the owner's own readers see the generation end
    assert time.monotonic() - stopped < 2
    assert b"data: [DONE]" not in b"\n".join(rest)
    remote_rest = list(lines)  # and so does the tail through Redis
    assert time.monotonic() - stopped < 3
    assert b"data: [DONE]" not in b"\n".join(remote_rest)
    assert lookup(a, CONV) == [] and lookup(b, CONV) == []
    assert replay(a).status_code == 404 and replay(b).status_code == 404
    quick = a.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
    assert quick.ok  # its worker is free


def test_a_new_request_on_another_replica_replaces_the_session(replicas) -> None:
    a, b = replicas
    start_session(a, tokens=3000).close()
    a.wait_status("slow", "loaded")
    wait_replay(b)
    replacement = start_session(b, tokens=20).content  # the same id, from the other replica
    deadline = time.monotonic() + 3
    while a.get("/slots", params={"model": "slow"}).json()[0]["is_processing"]:
        assert time.monotonic() < deadline, "the replaced generation went on"
        time.sleep(0.05)
    assert wait_replay(a).content == replacement == replay(b).content


def test_a_remote_tail_is_the_owners_bytes(replicas) -> None:
    a, b = replicas
    start_session(a, tokens=1000).close()
    a.wait_status("slow", "loaded")
    tail = wait_replay(b, stream=True)
    assert not lookup(b, CONV)[0]["is_done"]  # followed live, not replayed once finished
    body = tail.content
    assert body.endswith(b"data: [DONE]\n\n")
    assert body == replay(a).content


def test_a_session_outlives_the_sigkill_of_its_replica(replicas) -> None:
    a, b = replicas
    start_session(a, tokens=3000).close()
    a.wait_status("slow", "loaded")
    chunks = wait_replay(b, stream=True).iter_content(chunk_size=None)
    received = next(chunks)
    time.sleep(2.5)  # more events than one read of Redis returns (PAGE)
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    received += b"".join(chunks)  # the tail ends once the owner's heartbeat lapses
    assert time.monotonic() - killed < 8
    events = received.split(b"\n\n")
    assert len(events) > PAGE
    assert error_of(events[-2])["message"].startswith("the replica generating this stream is gone")
    replayed = replay(b)  # every byte the dead replica wrote is still there, and the same end
    assert replayed.elapsed.total_seconds() < 0.5 and replayed.content == received
    kept = len(received) - len(events[-2]) - 2
    (row,) = lookup(b, CONV)
    assert row["is_done"] and row["total_bytes"] == kept
    sweep_stale_segments()  # the dead router's rings, as its restart would


def test_redis_down_then_back(replicas, redis_server: RedisServer) -> None:
    a, b = replicas
    redis_server.kill()
    original = start_session(a, tokens=60).content  # generation goes on without Redis
    assert original.endswith(b"data: [DONE]\n\n")
    assert replay(a).content == original  # local sessions too
    assert lookup(a, CONV)[0]["is_done"]
    answers = (replay(b), delete(b), b.post("/v1/streams/lookup", {"conversation_ids": [CONV]}))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["type"] == "unavailable_error"
        assert "session store" in error["message"] and "unreachable" in error["message"]
    redis_server.start()  # empty, on the same port: the owner copies its sessions again
    assert wait_replay(b).content == original
    assert wait_done(b)["total_bytes"] == len(original)
    second = start_session(b, conv="after", model="tiny-a", tokens=5).content
    assert wait_replay(a, "after").content == second


def test_a_copy_expires_with_the_session_ttl_even_when_its_replica_is_gone(
    router, models_dir: Path, redis_server: RedisServer
) -> None:
    args = ("--models-dir", str(models_dir), "--sessions-redis", redis_server.url)
    a, b = (router(*args, "--stream-ttl-seconds", "2") for _ in range(2))
    start_session(a, tokens=20).close()
    wait_done(a)
    assert wait_replay(b).ok
    start_session(a, conv="kept", tokens=20).close()
    wait_done(a, "kept")
    assert wait_replay(b, "kept").ok
    a.stop(signal.SIGKILL)  # nobody is left to drop its copy: Redis's own expiry does
    deadline = time.monotonic() + 10
    while replay(b).status_code != 404 or replay(b, "kept").status_code != 404:
        assert time.monotonic() < deadline, "a finished session outlived its TTL"
        time.sleep(0.1)
    client = redis.Redis.from_url(redis_server.url)
    assert not [key for key in client.keys("llama-router:*") if b":replica:" not in key]


def test_a_json_answer_longer_than_a_pass_is_mirrored_whole() -> None:
    """An answer with no event end in a whole pass (a big JSON body) goes as it is; waiting
    for an event's end stalled its session, and the mirror with it, until the TTL."""
    body = b'{"data": "' + b"x" * PASS_BYTES + b'"}'
    assert mirror_entries(body[:PASS_BYTES], ended=False) == [body[:PASS_BYTES]]
    assert mirror_entries(b"data: 1\n\ndata: 2", ended=False) == [b"data: 1\n\n"]
    assert mirror_entries(b"data: 1\n\ndata: 2", ended=True) == [b"data: 1\n\n", b"data: 2"]
