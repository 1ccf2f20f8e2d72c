"""The supervisor's side of an HTTP process: its pipe and its rings, without a router."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from types import SimpleNamespace

import pytest

from router.control.dispatch import Dispatch
from router.control.port import Outbox
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
