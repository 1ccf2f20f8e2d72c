"""Resumable streams (API.md §7): sessions that outlive their client, replay, stop, lookup."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from router.catalog import ModelSpec
from router.control.sessions import Streams
from router.control.table import Model
from tests.server import RouterProcess
from tests.test_scheduling import Call, busy
from tests.tinymodels import EOS_TOKEN
from workers.errors import ApiError
from workers.ring import segments_of
from workers.session_index import follow_session

NO_EOS = {str(EOS_TOKEN): -100}
CONV = "team/chat:42"


def generation(model: str = "slow", tokens: int = 150) -> dict:
    return {
        "model": model,
        "stream": True,
        "max_tokens": tokens,
        "logit_bias": NO_EOS,
        "messages": [{"role": "user", "content": "go"}],
    }


def start_session(
    server: RouterProcess, conv: str = CONV, header: str = "X-Conversation-Id", **body
):
    return requests.post(
        server.url + "/v1/chat/completions",
        json=generation(**body),
        headers={header: conv},
        stream=True,
        timeout=60,
    )


def replay(
    server: RouterProcess, conv: str = CONV, offset: int | None = None, **kwargs
) -> requests.Response:
    query = f"?conv_id={quote(conv, safe='')}" + ("" if offset is None else f"&from={offset}")
    return requests.get(server.url + "/v1/stream" + query, timeout=60, **kwargs)


def finish(reply: requests.Response) -> bytes:
    """Read a whole answer (so the session has ended before the test goes on)."""
    return reply.content


def lookup(server: RouterProcess, *ids: str) -> list[dict]:
    return server.post("/v1/streams/lookup", {"conversation_ids": list(ids)}).json()


def wait_done(server: RouterProcess, conv: str = CONV, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = lookup(server, conv)
        if rows and rows[0]["is_done"]:
            return rows[0]
        time.sleep(0.05)
    raise TimeoutError(f"{conv} never finished: {lookup(server, conv)}")


@pytest.fixture
def server(router, models_dir: Path) -> RouterProcess:
    return router("--models-dir", str(models_dir))


def test_generation_outlives_its_client_and_replays_exactly(server: RouterProcess) -> None:
    first = start_session(server, header="x-CONVERSATION-id")  # any case
    lines = first.iter_lines()
    assert next(lines).startswith(b"id: ")
    first.close()  # the page reloads
    row = wait_done(server)
    assert row["conversation_id"] == CONV and row["total_bytes"] > 0
    assert row["completed_at"] >= row["started_at"] > 0
    full = replay(server).content
    assert len(full) == row["total_bytes"]
    assert full.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"length"' in full  # all 150 tokens were generated
    assert replay(server, offset=100).content == full[100:]
    assert replay(server).content == full  # replay is repeatable


def test_original_client_and_replay_get_the_same_bytes_with_event_ids(
    server: RouterProcess,
) -> None:
    original = start_session(server, tokens=40).content
    assert original == replay(server).content
    end = 0
    for event in re.finditer(rb"id: (\d+)\n(?:data: [^\n]*\n)+\n", original):
        end += len(event.group(0))
        assert int(event.group(1)) == end  # the id is the offset just past its event
    assert end == len(original)
    middle = int(re.findall(rb"id: (\d+)", original)[10])
    resumed = replay(server, headers={"Last-Event-ID": str(middle)}).content
    assert resumed == original[middle:]


def test_several_readers_follow_one_live_session(server: RouterProcess) -> None:
    start_session(server, tokens=300).close()
    server.wait_status("slow", "loaded")
    readers = [replay(server, stream=True) for _ in range(3)]
    bodies = [reader.content for reader in readers]
    assert bodies[0] == bodies[1] == bodies[2] == replay(server).content
    assert bodies[0].endswith(b"data: [DONE]\n\n")


def test_stream_errors(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--stream-buffer-bytes", "4096")
    finish(start_session(server, tokens=200))
    missing = requests.get(server.url + "/v1/stream", timeout=10)
    assert missing.status_code == 400
    assert replay(server, conv="nobody").status_code == 404
    assert replay(server, conv="nobody").json()["error"]["message"] == "Stream not found or expired"
    bad = requests.get(
        server.url + f"/v1/stream?conv_id={quote(CONV, safe='')}&from=abc", timeout=10
    )
    assert bad.status_code == 400
    lost = replay(server, offset=0)
    assert lost.status_code == 400
    assert lost.json()["error"]["message"] == "Stream offset lost, please restart"
    total = lookup(server, CONV)[0]["total_bytes"]
    tail = replay(server, offset=total - 100)
    assert tail.status_code == 200 and len(tail.content) == 100
    bad_body = requests.post(server.url + "/v1/streams/lookup", data=b"{nope", timeout=10)
    assert bad_body.status_code == 400


def test_503_while_loading_and_delete_cancels_the_wait(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    hog = busy(server)
    waiting = Call(server, {"model": "tiny-a", "prompt": "x", "max_tokens": 3})
    time.sleep(0.2)
    pending = Call(
        server, {"model": "tiny-b", "prompt": "x", "max_tokens": 3}, conversation="queued"
    )
    while not lookup(server, "queued"):
        time.sleep(0.02)
    loading = replay(server, conv="queued")
    assert loading.status_code == 503
    assert loading.json()["error"]["type"] == "unavailable_error"
    deleted = requests.delete(server.url + "/v1/stream?conv_id=queued", timeout=10)
    assert deleted.status_code == 204
    assert pending.result() == 400
    assert "cancelled" in pending.text
    assert hog.result() == 200 and waiting.result() == 200
    assert server.status("tiny-b") == "unloaded"
    assert requests.delete(server.url + "/v1/stream?conv_id=never", timeout=10).status_code == 204


def test_delete_stops_the_producer_and_a_new_request_replaces_the_session(
    server: RouterProcess,
) -> None:
    start_session(server, tokens=3000).close()
    server.wait_status("slow", "loaded")
    time.sleep(0.3)
    assert (
        requests.delete(server.url + f"/v1/stream?conv_id={quote(CONV)}", timeout=10).status_code
        == 204
    )
    assert lookup(server, CONV) == []
    started = time.monotonic()
    quick = server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
    assert quick.ok and time.monotonic() - started < 3  # the worker was free at once

    start_session(server, tokens=3000).close()
    time.sleep(0.5)
    second = start_session(server, tokens=20).content  # same id: cancels and replaces
    assert second.endswith(b"data: [DONE]\n\n")
    rows = lookup(server, CONV)
    assert len(rows) == 1 and rows[0]["is_done"]
    assert replay(server).content == second


def test_an_empty_conversation_id_asks_for_no_session(server: RouterProcess) -> None:
    reply = start_session(server, conv="", model="tiny-a", tokens=3)
    assert reply.status_code == 200 and b"data: [DONE]" in finish(reply)
    assert b"id: " not in reply.content  # the event ids only a session's stream carries
    assert server.post("/v1/streams/lookup", {"conversation_ids": [""]}).json() == []


def test_lookup_matches_exact_and_suffixed_ids(server: RouterProcess) -> None:
    for conv in ("alpha", "alpha::1", "alpha::2", "alphabet"):
        finish(start_session(server, conv=conv, model="tiny-a", tokens=3))
    ids = sorted(row["conversation_id"] for row in lookup(server, "alpha"))
    assert ids == ["alpha", "alpha::1", "alpha::2"]
    assert lookup(server) == []


def test_finished_sessions_expire(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--stream-ttl-seconds", "1")
    finish(start_session(server, model="tiny-a", tokens=3))
    assert replay(server).status_code == 200
    deadline = time.monotonic() + 10
    while replay(server).status_code != 404:
        assert time.monotonic() < deadline, "a finished session never expired"
        time.sleep(0.1)


def _follow_from_outside(owner_pid: int, conv: str, queue: multiprocessing.Queue) -> None:
    queue.put(b"".join(follow_session(owner_pid, conv)))


def test_a_separate_process_follows_a_live_session(server: RouterProcess) -> None:
    original = start_session(server, tokens=200)
    lines = original.iter_lines()
    next(lines)
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    outsider = context.Process(target=_follow_from_outside, args=(server.proc.pid, CONV, queue))
    outsider.start()
    received = queue.get(timeout=60)
    outsider.join(10)
    assert outsider.exitcode == 0
    assert received == replay(server).content
    assert received.endswith(b"data: [DONE]\n\n")
    assert len(segments_of(server.proc.pid)) >= 2  # the outsider unlinked nothing


def follow_a_long_session(server: RouterProcess) -> Iterator[bytes]:
    """A generation that outlives its client, and a reader already following it live."""
    start_session(server, tokens=3000).close()
    server.wait_status("slow", "loaded")
    lines = replay(server, stream=True).iter_lines()
    next(lines)
    return lines


def test_readers_get_an_error_when_the_worker_dies(server: RouterProcess) -> None:
    lines = follow_a_long_session(server)
    pid = server.model("slow")["pid"]
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    rest = [line for line in lines if line.startswith(b"data: ")]
    assert time.monotonic() - started < 2
    assert b'"error"' in rest[-1]
    assert replay(server).content.rstrip().endswith(b"}}")


def test_delete_during_prompt_processing_frees_the_worker(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "-c", "8192")
    body = {"model": "slow", "prompt": "x" * 6000, "max_tokens": 5, "stream": True}
    Call(server, body, conversation="long-prompt")
    server.wait_status("slow", "loaded")
    time.sleep(0.3)  # the worker is deep in the 6000-token prompt
    assert requests.delete(server.url + "/v1/stream?conv_id=long-prompt", timeout=10).ok
    started = time.monotonic()
    quick = server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
    assert quick.ok
    assert time.monotonic() - started < 2.5, "the prompt kept running after its stream was deleted"


def test_shutdown_ends_live_sessions_for_their_readers(server: RouterProcess) -> None:
    lines = follow_a_long_session(server)
    stopped = time.monotonic()
    server.stop(signal.SIGTERM)
    list(lines)  # the follower's stream ends instead of hanging
    assert time.monotonic() - stopped < 10
    alive, segments = server.leftovers()
    assert alive == [] and segments == []


class NeverLoads:
    """A supervisor whose model never comes: the session waits in acquire until stopped."""

    async def acquire(self, model: object, autoload: bool) -> None:
        await asyncio.sleep(100)


@pytest.mark.parametrize("started", [False, True], ids=["before its task ran", "in acquire"])
def test_a_session_stopped_while_waiting_answers_its_post(started: bool) -> None:
    async def scenario() -> None:
        streams = Streams(NeverLoads(), None, None, 4096, 300, slots=4)  # type: ignore[arg-type]
        try:
            model = Model(ModelSpec(id="m", source="models_dir"))
            session = streams.start("conv", model, "/completion", b"{}", True)
            if started:
                await asyncio.sleep(0.05)
            streams.delete("conv")
            with pytest.raises(ApiError, match="cancelled"):
                await asyncio.wait_for(asyncio.shield(session.sent), 2)
            assert session.task is not None
            (ended,) = await asyncio.gather(session.task, return_exceptions=True)
            assert not isinstance(ended, Exception)  # no error of its own (a cancel is fine)
            assert session.closed
        finally:
            streams.index.close()
            streams.index.unlink()

    asyncio.run(scenario())


def test_a_worker_keeps_no_mapping_of_a_finished_session(server: RouterProcess) -> None:
    for conv in ("one", "two", "three"):
        finish(start_session(server, conv=conv, model="tiny-a", tokens=3))
        assert requests.delete(server.url + f"/v1/stream?conv_id={conv}", timeout=10).ok
    maps = Path(f"/proc/{server.model('tiny-a')['pid']}/maps").read_text().splitlines()
    held = [line for line in maps if "/dev/shm/llama_router_" in line and "(deleted)" in line]
    assert held == []  # a kept mapping would hold each unlinked 4 MiB ring
