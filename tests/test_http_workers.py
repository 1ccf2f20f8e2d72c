"""`--http-workers N` (issue 10): N HTTP processes accept on one port over one supervisor.

The main process serves HTTP and runs the supervisor (models, workers, sessions, events); N-1
child processes serve HTTP too, and every route works from each. A test reaches a given process
through a `Pinned` connection: one keep-alive TCP connection whose process is known from the
`X-Llama-Router-Pid` header of `GET /health`, and every request of which is checked to travel
over that very connection. The kernel spreads new connections over the processes, so a
connection to a wanted process is found by opening a few.

The helpers of test_streams.py open a new connection per request (any process may answer), so
this file has pinned versions of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import requests

from tests.server import RouterProcess, model_worker_pids
from tests.tinymodels import EOS_TOKEN
from workers.ring import segments_of

PID_HEADER = "X-Llama-Router-Pid"
NO_EOS = {str(EOS_TOKEN): -100}
CONV = "team/chat:10"
# New connections opened to reach a wanted process, and for how long at most: each lands on a
# process the kernel picks, at random but not evenly (a process busy for a moment gets none).
TRIES = 200
TRY_SECONDS = 10.0
CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": "tiny-a", "prompt": "x", "max_tokens": 4}


# --- connections pinned to one HTTP process ------------------------------------------------


def local_port(reply: requests.Response) -> int:
    """The local port of the TCP connection an answer (read with stream=True) came over."""
    connection = reply.raw.connection
    assert connection is not None and connection.sock is not None, "the answer holds no socket"
    return int(connection.sock.getsockname()[1])


class Pinned:
    """One keep-alive connection to one HTTP process of the router, and that process's pid.

    A request that does not travel over this very TCP connection (checked by its local port)
    fails instead of silently reaching another process: that happens when the connection is busy
    with an answer not read to its end, was closed by such an answer, or sat idle longer than the
    server's keep-alive timeout (a few seconds), so tests use a pin soon after making it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        reply = self.session.get(url + "/health", stream=True, timeout=10)
        self.port = local_port(reply)
        assert PID_HEADER in reply.headers, f"GET /health has no {PID_HEADER}: {reply.headers}"
        self.pid = int(reply.headers[PID_HEADER])
        _ = reply.content  # read to its end: the connection goes back to the session's pool

    def request(
        self, method: str, path: str, *, stream: bool = False, timeout: float = 60, **kwargs: Any
    ) -> requests.Response:
        """The answer, read whole unless `stream` (then the connection is its until its end)."""
        reply = self.session.request(
            method, self.url + path, stream=True, timeout=timeout, **kwargs
        )
        if local_port(reply) != self.port:
            reply.close()
            raise AssertionError(f"{method} {path} went over a new connection, not to {self.pid}")
        if not stream:
            _ = reply.content
        return reply

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()


def new_connections(url: str) -> Iterator[Pinned]:
    """Up to TRIES new connections over at most TRY_SECONDS, a short pause between two."""
    deadline = time.monotonic() + TRY_SECONDS
    for _ in range(TRIES):
        yield Pinned(url)
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def pin(url: str, wanted: Callable[[int], bool], what: str) -> Pinned:
    """A connection to a process whose pid `wanted` accepts."""
    reached: set[int] = set()
    for connection in new_connections(url):
        if wanted(connection.pid):
            return connection
        reached.add(connection.pid)
        connection.close()
    raise AssertionError(f"{TRIES} new connections never reached {what}, only {sorted(reached)}")


def sessions_on_distinct_processes(url: str, count: int) -> list[Pinned]:
    """`count` connections (requests sessions with their pid), each to a different process."""
    found: dict[int, Pinned] = {}
    for connection in new_connections(url):
        if connection.pid in found:
            connection.close()
        else:
            found[connection.pid] = connection
        if len(found) == count:
            return list(found.values())
    raise AssertionError(f"{TRIES} new connections reached only processes {sorted(found)}")


def main_and_child(server: RouterProcess) -> tuple[Pinned, Pinned]:
    """A connection to the main process and one to a child HTTP process."""
    main = server.proc.pid
    return (
        pin(server.url, lambda pid: pid == main, f"the main process {main}"),
        pin(server.url, lambda pid: pid != main, "a child HTTP process"),
    )


def http_processes(via: Pinned | RouterProcess, headers: dict[str, str] | None = None) -> list[int]:
    """`http_processes` of `GET /props`: the main process first, then the children alive now."""
    reply = via.get("/props", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    return [int(pid) for pid in reply.json()["http_processes"]]


def wait_http_processes(
    server: RouterProcess, count: int, headers: dict[str, str] | None = None, timeout: float = 30
) -> list[int]:
    """Wait until /props lists `count` HTTP processes and each of them has answered /health."""
    deadline = time.monotonic() + timeout
    pids = http_processes(server, headers)
    while len(pids) != count and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = http_processes(server, headers)
    assert len(pids) == count, f"/props lists {pids}, not {count} HTTP processes"
    assert pids[0] == server.proc.pid, f"the main process is not listed first: {pids}"
    answered: set[int] = set()
    while not answered >= set(pids) and time.monotonic() < deadline:
        reply = requests.get(server.url + "/health", timeout=10)  # a new connection each time
        answered.add(int(reply.headers[PID_HEADER]))
        time.sleep(0.01)
    assert answered == set(pids), f"/health answered from {answered}, /props lists {pids}"
    return pids


def wait_answering(url: str, pid: int, timeout: float = 10) -> None:
    """Wait until process `pid` accepts connections (a new process is listed before that)."""
    deadline = time.monotonic() + timeout
    while True:
        connection = Pinned(url)
        connection.close()
        if connection.pid == pid:
            return
        assert time.monotonic() < deadline, f"process {pid} never answered /health"
        time.sleep(0.01)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- resumable sessions through a pinned connection (as in test_streams.py) ----------------


def completion(model: str, tokens: int) -> dict[str, Any]:
    """A streamed completion that runs its full length (EOS is banned)."""
    return {
        "model": model,
        "prompt": "go",
        "max_tokens": tokens,
        "logit_bias": NO_EOS,
        "stream": True,
    }


def start_session(via: Pinned, body: dict[str, Any], conv: str = CONV) -> requests.Response:
    """POST /v1/completions as session `conv`; the answer is returned unread."""
    return via.post("/v1/completions", json=body, headers={"X-Conversation-Id": conv}, stream=True)


def stream_query(conv: str) -> str:
    return f"/v1/stream?conv_id={quote(conv, safe='')}"


def replay(
    via: Pinned, conv: str = CONV, offset: int | None = None, stream: bool = False
) -> requests.Response:
    query = stream_query(conv) + ("" if offset is None else f"&from={offset}")
    return via.get(query, stream=stream, timeout=15)


def lookup(via: Pinned, *ids: str) -> list[dict[str, Any]]:
    reply = via.post("/v1/streams/lookup", json={"conversation_ids": list(ids)})
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def wait_done(via: Pinned, conv: str = CONV, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = lookup(via, conv)
        if rows and rows[0]["is_done"]:
            return rows[0]
        time.sleep(0.05)
    raise TimeoutError(f"{conv} never finished: {lookup(via, conv)}")


def model_status(via: Pinned, model: str) -> str:
    for entry in via.get("/models").json()["data"]:
        if entry["id"] == model:
            return str(entry["status"]["value"])
    raise KeyError(model)


def wait_status(via: Pinned, model: str, value: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while model_status(via, model) != value:
        assert time.monotonic() < deadline, f"{model} never became {value} (process {via.pid})"
        time.sleep(0.02)


class Events(threading.Thread):
    """Collects the `data:` events of one `GET /models/sse` answer."""

    def __init__(self, reply: requests.Response) -> None:
        super().__init__(daemon=True)
        assert reply.headers["content-type"].startswith("text/event-stream")
        self.reply = reply
        self.sock = reply.raw.connection.sock
        self.events: list[dict[str, Any]] = []
        self.start()

    def run(self) -> None:
        with contextlib.suppress(requests.RequestException, AttributeError, ValueError):
            for line in self.reply.iter_lines():
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))

    def stop(self) -> None:
        """End the reading (closing the answer from here would wait for the thread's read)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join(10)

    def of(self, model: str) -> list[tuple[str, str | None]]:
        return [
            (event["event"], (event.get("data") or {}).get("status"))
            for event in list(self.events)
            if event["model"] == model
        ]

    def wait_for(self, model: str, event: str, status: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (event, status) not in self.of(model):
            assert time.monotonic() < deadline, f"no {event} {status} for {model}: {self.events}"
            time.sleep(0.02)


class FirstByte(threading.Thread):
    """A streamed request in the background; records how long after `since` its first byte came."""

    def __init__(self, via: Pinned, body: dict[str, Any], since: float) -> None:
        super().__init__(daemon=True)
        self.via, self.body, self.since = via, body, since
        self.seconds: float | None = None
        self.status: int | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            reply = self.via.post("/v1/completions", json=self.body, stream=True, timeout=30)
            self.status = reply.status_code
            next(reply.iter_content(None))
            self.seconds = time.monotonic() - self.since
            _ = reply.content
        except BaseException as error:
            self.error = error


# --- fixture -------------------------------------------------------------------------------


@pytest.fixture
def start(router, models_dir: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start a router on the test models with `processes` HTTP processes, ready on each.

    At teardown, beyond the router fixture's checks (which look at segments named after the
    main process), no segment named after any other process of it is left behind: a child HTTP
    process (those started first included, even a killed one) or a worker.
    """
    started: list[tuple[RouterProcess, list[int]]] = []

    def start_router(
        processes: int,
        *args: str,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> RouterProcess:
        flag = [] if env and "LLAMA_ARG_HTTP_WORKERS" in env else ["--http-workers", str(processes)]
        server = router("--models-dir", str(models_dir), *flag, *args, env=env)
        started.append((server, wait_http_processes(server, processes, headers)))
        return server

    yield start_router
    for server, first_pids in started:
        server.stop_and_check()
        owners = {server.proc.pid, *first_pids, *server.children}
        left = [name for pid in sorted(owners) for name in segments_of(pid)]
        assert not left, f"segments of HTTP processes outlived the router: {left}"


# --- sessions across processes -------------------------------------------------------------


def test_a_session_made_through_one_process_replays_and_looks_up_through_another(start) -> None:
    """A session is not the property of the HTTP process that took its POST: the bytes its
    client got through process A come back byte for byte through process B (from the start and
    from an offset), and B's lookup lists it, finished, with that many bytes."""
    server = start(2)
    a, b = sessions_on_distinct_processes(server.url, 2)
    original = start_session(a, completion("tiny-a", 200)).content
    assert original.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"length"' in original  # all 200 tokens: a long answer
    assert replay(b).content == original
    assert replay(b, offset=100).content == original[100:]
    [row] = lookup(b, CONV)
    assert row["conversation_id"] == CONV
    assert row["is_done"] and row["total_bytes"] == len(original)


def test_a_live_session_is_followed_and_stopped_through_another_process(start) -> None:
    """While `slow` generates a session started through process A, a reader on process B gets
    its new bytes live; a DELETE through B stops the generation: A's answer and B's reader both
    end at once, the session is gone, and the model is free for the next request."""
    server = start(2)
    a, b = sessions_on_distinct_processes(server.url, 2)
    origin = start_session(a, completion("slow", 3000)).iter_content(None)
    got = next(origin)
    follower = replay(b, stream=True).iter_content(None)
    followed = next(follower)
    b_again = pin(server.url, lambda pid: pid == b.pid, f"process {b.pid} again")
    [row] = lookup(b_again, CONV)
    assert not row["is_done"]
    while len(followed) <= row["total_bytes"]:  # bytes generated after the lookup reach B live
        followed += next(follower)

    assert b_again.delete(stream_query(CONV)).status_code == 204
    stopped = time.monotonic()
    got += b"".join(origin)
    followed += b"".join(follower)
    assert time.monotonic() - stopped < 3, "the streams went on after the DELETE"
    assert b'"finish_reason":"length"' not in got  # far from its 3000 tokens
    common = min(len(got), len(followed))
    assert common > 0 and got[:common] == followed[:common]
    assert lookup(b_again, CONV) == []
    quick = b_again.post("/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 2})
    assert quick.status_code == 200 and time.monotonic() - stopped < 4  # the worker was free


# --- every route from every process --------------------------------------------------------


def test_inference_and_model_routes_work_through_every_process(start) -> None:
    """Chat and completions, plain and streamed, `/models`, `/props` and `/props?model=` answer
    through the main process and through a child; `/models/load` and `/models/unload` through the
    child act on the one supervisor, as the main process sees."""
    server = start(2)
    for via in main_and_child(server):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
            plain = via.post(path, json=body)
            assert plain.status_code == 200, (via.pid, path, plain.text)
            assert plain.json()["choices"], (via.pid, path, plain.text)
            streamed = via.post(path, json={**body, "stream": True})
            assert streamed.status_code == 200, (via.pid, path, streamed.text)
            assert streamed.content.endswith(b"data: [DONE]\n\n"), (via.pid, path)
        assert {"tiny-a", "tiny-b", "slow"} <= {e["id"] for e in via.get("/models").json()["data"]}
        props = via.get("/props", params={"model": "tiny-a"}).json()
        assert props["model_path"].endswith("tiny-a.gguf"), (via.pid, props)
        assert http_processes(via)[0] == server.proc.pid

    main, child = main_and_child(server)
    assert child.post("/models/load", json={"model": "tiny-b"}).json() == {"success": True}
    wait_status(child, "tiny-b", "loaded")
    assert model_status(main, "tiny-b") == "loaded"
    assert child.post("/models/unload", json={"model": "tiny-b"}).json() == {"success": True}
    wait_status(child, "tiny-b", "unloaded")
    assert model_status(main, "tiny-b") == "unloaded"


def test_metrics_count_the_requests_of_every_process(start) -> None:
    """`/metrics` (served by the main process) counts the requests a child served too, their
    waits for the model included, and a CORS preflight is answered by a child as by the main
    process."""
    server = start(2, "--metrics", "--cors-origins", "http://page.example")
    main, child = main_and_child(server)
    for _ in range(5):
        assert child.post("/v1/completions", json=COMPLETION).status_code == 200
    assert main.post("/v1/completions", json=COMPLETION).status_code == 200
    page = child.get("/metrics").text
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("llamarouter_http_request_duration_seconds_count{")
        and 'route="/v1/completions"' in line
        and 'status="2xx"' in line
    ]
    assert served == [6.0], page
    # requests the child sent straight to the worker (all but the first, which loaded it) too
    assert 'llamarouter_queue_wait_seconds_count{model="tiny-a"} 6.0' in page, page
    for via in (main, child):
        preflight = via.request(
            "OPTIONS",
            "/v1/completions",
            headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://page.example"


def test_api_keys_are_checked_by_every_process(start) -> None:
    """With `--api-key k`, the main process and a child both answer 401 to a request without
    the key, serve it with the key, and leave `/health` public."""
    key = {"Authorization": "Bearer k"}
    server = start(2, "--api-key", "k", headers=key)
    for via in main_and_child(server):
        assert via.get("/health").status_code == 200
        refused = via.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 401, (via.pid, refused.text)
        assert refused.json()["error"]["type"] == "authentication_error"
        assert via.get("/props").status_code == 401, via.pid
        served = via.post("/v1/chat/completions", json=CHAT, headers=key)
        assert served.status_code == 200, (via.pid, served.text)
        assert http_processes(via, key)[0] == server.proc.pid


def test_model_events_reach_subscribers_on_every_process_once(start) -> None:
    """A `/models/sse` subscriber on each process (two processes asked for through the env
    variable LLAMA_ARG_HTTP_WORKERS) sees one load of tiny-a as the same events: its
    `status_change` loaded exactly once, then its unload."""
    server = start(2, env={"LLAMA_ARG_HTTP_WORKERS": "2"})
    a, b = sessions_on_distinct_processes(server.url, 2)
    readers = [Events(via.get("/models/sse", stream=True)) for via in (a, b)]
    try:
        assert server.post("/models/load", {"model": "tiny-a"}).ok
        for reader in readers:
            reader.wait_for("tiny-a", "status_change", "loaded")
        assert server.post("/models/unload", {"model": "tiny-a"}).ok
        for reader in readers:  # anything doubled came before this
            reader.wait_for("tiny-a", "status_change", "unloaded")
        first, second = (reader.of("tiny-a") for reader in readers)
        assert first == second
        assert first[0] == ("model_status", "loading")
        assert first.count(("status_change", "loaded")) == 1, first
        assert first.count(("status_change", "unloaded")) == 1, first
    finally:
        for reader in readers:
            reader.stop()


# --- requests straight to a worker ---------------------------------------------------------


def test_a_child_sends_a_request_for_a_loaded_model_straight_to_its_worker(start) -> None:
    """A request through a child for a loaded model goes to its worker past the supervisor: it
    is answered while the main process is stopped (SIGSTOP). Once the main process runs again
    the supervisor has counted that request and let go of it: with one model slot, a request
    for another model evicts this one at once, which it could not while it counted it busy."""
    server = start(2, "--models-max", "1")
    main, child = main_and_child(server)
    assert main.post("/v1/completions", json=COMPLETION).status_code == 200  # tiny-a loaded
    assert child.post("/v1/completions", json=COMPLETION).status_code == 200
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        streamed = child.post("/v1/completions", json={**COMPLETION, "stream": True}, timeout=10)
        plain = child.post("/v1/chat/completions", json=CHAT, timeout=10)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert streamed.status_code == 200 and streamed.content.endswith(b"data: [DONE]\n\n")
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"], plain.text
    other = server.post("/v1/completions", {**COMPLETION, "model": "tiny-b"}, timeout=30)
    assert other.status_code == 200, other.text
    assert server.status("tiny-a") == "unloaded"


def queued_at_a_stopped_worker(server: RouterProcess) -> tuple[Pinned, int, FirstByte]:
    """tiny-a loaded, its worker stopped (SIGSTOP), and a streamed request that a child sent
    straight to it waiting in its socket: a connection to the main process, the worker's pid
    and the request."""
    main, child = main_and_child(server)
    assert main.post("/v1/completions", json=COMPLETION).status_code == 200
    assert child.post("/v1/completions", json=COMPLETION).status_code == 200
    worker = int(server.model("tiny-a")["pid"])
    os.kill(worker, signal.SIGSTOP)
    queued = FirstByte(child, {**COMPLETION, "stream": True}, since=time.monotonic())
    time.sleep(1.5)  # long enough for its datagram to be sent, even on a busy machine
    return main, worker, queued


def test_a_request_queued_at_a_worker_that_stops_goes_again_through_the_supervisor(start) -> None:
    """A request waiting on the worker's direct socket when the worker reads its unload is
    refused unread and sent again through the supervisor, which loads the model anew for it:
    its client sees only the answer."""
    server = start(2)
    main, worker, queued = queued_at_a_stopped_worker(server)
    try:
        assert main.post("/models/unload", json={"model": "tiny-a"}).json() == {"success": True}
    finally:
        os.kill(worker, signal.SIGCONT)
    queued.join(30)
    assert queued.error is None and queued.status == 200, (queued.error, queued.status)
    server.wait_log("sending a request to tiny-a again: its worker had stopped taking requests")
    assert server.status("tiny-a") == "loaded"


def test_a_request_sent_straight_to_a_worker_that_dies_before_reading_it_goes_again(
    start,
) -> None:
    """The supervisor hears of a request sent straight to a worker a moment after it went:
    when that worker died without reading it, its HTTP process is told, and sends it again
    through the supervisor to the model's next worker."""
    server = start(2)
    _, worker, queued = queued_at_a_stopped_worker(server)
    os.kill(worker, signal.SIGKILL)
    queued.join(30)
    assert queued.error is None and queued.status == 200, (queued.error, queued.status)
    server.wait_log("sending a request to tiny-a again: its worker died first")
    assert server.model("tiny-a")["pid"] != worker


# --- faults --------------------------------------------------------------------------------


def test_a_killed_child_is_replaced_and_its_stream_frees_the_model(start) -> None:
    """SIGKILL of a child HTTP process in the middle of a stream on `slow` (one slot): a new
    child is listed in `/props` within 2 s and accepts connections, and the killed child's
    request is cancelled (whether the supervisor heard of it yet or not), so a request through
    the main process gets its first byte long before the 3000 tokens of the killed one would
    have been generated."""
    server = start(2, "-np", "1")
    main, child = main_and_child(server)
    poller = pin(server.url, lambda pid: pid == server.proc.pid, "the main process")
    # loaded, so that the child sends its request straight to the worker, and is killed
    # before it tells the supervisor of it
    assert main.post("/v1/completions", json={**COMPLETION, "model": "slow"}).status_code == 200
    held = child.post("/v1/completions", json=completion("slow", 3000), stream=True)
    assert next(held.iter_content(None))
    os.kill(child.pid, signal.SIGKILL)
    killed = time.monotonic()
    quick = FirstByte(main, {**COMPLETION, "model": "slow", "stream": True}, since=killed)

    pids = http_processes(poller)
    while (len(pids) != 2 or child.pid in pids) and time.monotonic() - killed < 2:
        time.sleep(0.02)
        pids = http_processes(poller)
    assert len(pids) == 2 and child.pid not in pids, f"no new child 2 s after the kill: {pids}"
    assert pids[0] == server.proc.pid and running(pids[1])
    wait_answering(server.url, pids[1])

    quick.join(30)
    assert quick.error is None and quick.status == 200, (quick.error, quick.status)
    # the killed request alone would have held the slot for 3000 tokens, about 30 s
    assert quick.seconds is not None and quick.seconds < 4, f"first byte after {quick.seconds} s"
    held.close()


def test_a_session_started_through_a_killed_child_goes_on_and_replays_through_main(
    start,
) -> None:
    """A session whose POST came through a child goes on generating when that child is
    SIGKILLed, to its last token, and the main process replays all of it and looks it up."""
    server = start(2)
    main, child = main_and_child(server)
    origin = start_session(child, completion("slow", 400))  # about 2 s
    assert next(origin.iter_content(None))
    os.kill(child.pid, signal.SIGKILL)
    [row] = lookup(main, CONV)
    assert not row["is_done"], "the session ended before the kill: the test proves nothing"
    done = wait_done(main)
    full = replay(main).content
    assert len(full) == done["total_bytes"]
    assert full.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"length"' in full  # all 400 tokens were generated
    origin.close()


def test_sigkill_of_the_main_process_takes_every_process_down_and_restart_sweeps(
    start,
) -> None:
    """SIGKILL of the main process in the middle of a stream served by a child: the child HTTP
    processes and the model workers exit within 5 s, and a router started afterwards on the same
    cache dir removes the segments they left (named after the main process or a child), and no
    one else's."""
    server = start(2)
    main, child = main_and_child(server)
    reply = child.post("/v1/completions", json=completion("slow", 3000), stream=True)
    chunks = reply.iter_content(None)  # kept: a dropped iterator closes the connection
    assert next(chunks)
    http_pids = http_processes(main)
    workers = model_worker_pids(server.proc.pid)
    assert server.model("slow")["pid"] in workers
    assert any(segments_of(pid) for pid in http_pids)
    children = set(http_pids[1:]) | set(workers)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in children if running(pid)]
    assert not alive, f"processes outlived a SIGKILLed main process: {alive}"
    reply.close()
    # The orphans' last trace is init's to remove (here it reaps about once a second); while
    # it lasts, their pids count as alive and their segments are not stale yet.
    while any(psutil.pid_exists(pid) for pid in children) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert not [pid for pid in children if psutil.pid_exists(pid)], "init never reaped them"

    stale = [Path(f"/dev/shm/llama_router_{pid}_999") for pid in http_pids]
    for path in stale:
        path.write_bytes(b"x")  # as if the resource tracker had not cleaned up either
    foreign = Path(f"/dev/shm/someone_elses_segment_{os.getpid()}")
    foreign.write_bytes(b"y")
    try:
        start(2)
        assert not [path for path in stale if path.exists()]
        assert not [name for pid in http_pids for name in segments_of(pid)]
        assert foreign.exists()
    finally:
        foreign.unlink()


def test_sigterm_ends_a_followers_stream_on_a_child_and_every_process_exits(start) -> None:
    """SIGTERM of the main process while a reader on a child follows a live session: the
    reader's stream ends cleanly within 10 s, the main process exits without error and no
    process or segment is left."""
    server = start(2)
    main = pin(server.url, lambda pid: pid == server.proc.pid, "the main process")
    start_session(main, completion("slow", 3000)).close()  # the session outlives its client
    server.wait_status("slow", "loaded")
    child = pin(server.url, lambda pid: pid != server.proc.pid, "a child HTTP process")
    follower = replay(child, stream=True).iter_content(None)
    assert next(follower)

    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(server.stop(signal.SIGTERM)))
    stopped = time.monotonic()
    stopper.start()
    for _ in follower:  # ends instead of hanging, without a cut connection
        pass
    assert time.monotonic() - stopped < 10
    stopper.join(60)
    assert codes and codes[0] in (0, -signal.SIGTERM), codes  # uvicorn may re-raise the signal
    alive, segments = server.leftovers()
    assert alive == [] and segments == []


# --- one process or two: the same answers --------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-processes"])
def test_a_completion_and_a_session_replay_on_n_processes(start, processes: int) -> None:
    """With one HTTP process or two, each answers /health with its own pid, a completion is
    served, and a session's replay (through the last process) equals its original answer
    (through the first)."""
    server = start(processes)
    pins = sessions_on_distinct_processes(server.url, processes)
    assert sorted(p.pid for p in pins) == sorted(http_processes(server))
    assert server.proc.pid in {p.pid for p in pins}
    first, last = pins[0], pins[-1]
    reply = first.post("/v1/completions", json=COMPLETION)
    assert reply.status_code == 200 and isinstance(reply.json()["choices"][0]["text"], str)
    original = start_session(first, completion("tiny-a", 40)).content
    assert original.endswith(b"data: [DONE]\n\n")
    assert replay(last).content == original
