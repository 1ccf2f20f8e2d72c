"""The supervisor's side of an HTTP process: its pipe and its rings, without a router."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from types import SimpleNamespace

import pytest

from router.catalog import ModelSpec
from router.config import RouterConfig
from router.control.direct_routes import DirectRoutesPublisher
from router.control.dispatch import Dispatch
from router.control.port import Outbox
from router.control.supervisor import Supervisor
from router.control.table import Model, Status
from router.messages import DirectRoute
from router.metrics import RouterMetrics
from workers.ring import Ring


@pytest.mark.parametrize("size", [65536, 1000])  # through the thread; at once while there is room
def test_a_process_that_stops_reading_never_blocks_the_supervisor(size: int) -> None:
    ours, theirs = multiprocessing.Pipe()  # nobody reads `theirs`
    stuck = threading.Event()
    outbox = Outbox(ours, stuck.set, limit=4 << 20)
    started = time.monotonic()
    for _ in range(6_400_000 // size):  # 6.4 MB, far more than the pipe holds
        outbox.put(b"x" * size)
    assert time.monotonic() - started < 1.0  # every put returned at once
    assert stuck.is_set()  # and the process that fell behind is given up on
    outbox.close()
    theirs.close()
    ours.close()


def test_messages_go_out_whole_and_in_order() -> None:
    ours, theirs = multiprocessing.Pipe()
    outbox = Outbox(ours, lambda: None)
    sent = [bytes([n]) * (n * 1000 + 1) for n in range(50)]
    for message in sent:
        outbox.put(message)
    assert [theirs.recv_bytes() for _ in sent] == sent
    outbox.close()
    theirs.close()
    ours.close()


def test_a_ring_its_http_process_reset_counts_as_finished() -> None:
    """The supervisor frees a request's model once its ring is done, even before the worker's
    `Ended` arrives, and also when the HTTP process already took the ring back for another
    request (a reset ring reads as running again)."""

    async def scenario() -> None:
        ring = Ring.create(f"llama_router_{os.getpid()}_99", 4096, backpressure=True)
        try:
            released: list[object] = []
            dispatch = Dispatch(released.append)
            lease = SimpleNamespace(worker=SimpleNamespace(send=lambda command: True))
            dispatch.send(lease, "/completion", b"{}", ring)  # type: ignore[arg-type]
            dispatch.settle_finished()
            assert released == []
            ring.finish()
            ring.reset()
            dispatch.settle_finished()
            assert released == [lease]
        finally:
            ring.close()
            ring.unlink()

    asyncio.run(scenario())


def test_a_dead_processs_rings_are_cancelled_even_those_never_told_of() -> None:
    """A request an HTTP process sent straight to a worker is told to the supervisor only a
    moment later: when that process dies first, its generation still ends, because every ring
    the process made is cancelled, known here or not."""
    dead = 4_000_000_000  # no process has this pid
    rings = [Ring.create(f"llama_router_{dead}_{serial}", 4096) for serial in (1, 2)]
    try:
        dispatch = Dispatch(lambda lease: None)
        assert dispatch.cancel_from(dead) == []
        assert all(ring.cancelled for ring in rings)
        dispatch.forget(dead)
    finally:
        for ring in rings:
            ring.close()
            ring.unlink()


def test_a_direct_request_that_ended_before_it_was_told_of_is_settled_at_once() -> None:
    """The worker's `Ended` may reach the supervisor before the HTTP process's word: the
    request is then counted and let go in one step, whether its ring is done or already
    reused."""

    async def scenario() -> None:
        ring = Ring.create(f"llama_router_{os.getpid()}_98", 4096, backpressure=True)
        try:
            released: list[object] = []
            dispatch = Dispatch(released.append)
            running = dispatch.adopt("running", 1 << 40 | 1, ring, ring.uses)  # type: ignore[arg-type]
            assert released == [] and not running.finished.done()
            uses = ring.uses
            ring.finish()
            dispatch.adopt("done", 1 << 40 | 2, ring, uses)  # type: ignore[arg-type]
            ring.reset()
            dispatch.adopt("reused", 1 << 40 | 3, ring, uses)  # type: ignore[arg-type]
            assert released == ["done", "reused"]
        finally:
            ring.close()
            ring.unlink()

    asyncio.run(scenario())


def test_direct_routes_name_the_ready_models_and_a_lease_needs_the_worker_it_went_to() -> None:
    """HTTP processes send straight only to models that are loaded and awake (and not
    draining), under every name of theirs; a request told of afterwards counts against the
    model only if it went to the model's worker of now (an older one has exited, or is
    exiting)."""

    async def scenario() -> None:
        spec = ModelSpec(id="a", source="models_dir", path="/a.gguf", aliases=["alias"])
        config, metrics = RouterConfig(), RouterMetrics()
        supervisor = Supervisor(config, {"a": spec}, lambda _: False, print, metrics)
        model = supervisor.models["a"]
        model.status, model.worker, model.direct = Status.LOADED, SimpleNamespace(pid=7), "@a"
        model.mark_changed()
        seen: list[dict[str, DirectRoute]] = []
        supervisor.on_direct_routes(seen.append)
        route = DirectRoute("a", 7, "@a")
        assert seen == [{"a": route, "alias": route}]

        assert supervisor.adopt("a", 8) is None
        lease = supervisor.adopt("a", 7)
        assert lease is not None and model.in_flight == 1
        model.status = Status.SLEEPING
        model.mark_changed()
        supervisor.release(lease)  # an event read: the routes are looked at again
        assert model.in_flight == 0
        assert seen[-1] == {}

    asyncio.run(scenario())


def test_under_fake_timing_no_request_goes_straight() -> None:
    """LLAMA_SERVER_DEBUG_FAKE_TIMING holds each request in the supervisor for a while: a
    request sent straight to the worker would skip that hold."""
    model = Model(ModelSpec(id="a", source="models_dir", path="/a.gguf"))
    model.status, model.worker, model.direct = Status.LOADED, SimpleNamespace(pid=7), "@a"
    for enabled, expected in ((True, {"a": DirectRoute("a", 7, "@a")}), (False, {})):
        seen: list[dict[str, DirectRoute]] = []
        DirectRoutesPublisher(enabled).subscribe(seen.append, {"a": model}, {"a": "a"})
        assert seen == [expected]
