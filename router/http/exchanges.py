"""An HTTP process's side of the data path: its response rings, and the wake-ups that tell it
when a ring has new bytes.

Every HTTP process owns a pool of response rings. A request takes one, the supervisor sends it
to a worker, and the worker writes the answer there and notes it straight to this process
(workers/notes.py). A ring goes back to the pool only once its worker has let go of it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.errors import ApiError
from workers.notes import NoteListener
from workers.ring import Ring, RingState, segment_name

FALLBACK_WAIT = 0.25


class Waker:
    """Wakes every task waiting on it; a wait also ends after `timeout` as a safety net."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float = FALLBACK_WAIT) -> None:
        event = self._event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass


class RingWatch:
    """This process's readers of rings: the worker is asked (in the ring's header) to note new
    bytes to this process while it has a reader, and a note wakes that ring's readers."""

    def __init__(self, router_pid: int, process: int) -> None:
        self.process = process
        self._router_pid = router_pid
        self._followed: dict[int, tuple[Waker, int]] = {}
        self._listener: NoteListener | None = None

    def start(self) -> None:
        self._listener = NoteListener(self._router_pid, self.process, self._wake)

    def follow(self, ring: Ring) -> Waker:
        waker, readers = self._followed.get(ring.key, (None, 0))
        waker = waker or Waker()
        self._followed[ring.key] = (waker, readers + 1)
        ring.follow(self.process, readers + 1)
        return waker

    def unfollow(self, ring: Ring) -> None:
        waker, readers = self._followed.get(ring.key, (None, 0))
        if waker is None:
            return
        ring.follow(self.process, readers - 1)
        if readers > 1:
            self._followed[ring.key] = (waker, readers - 1)
        else:
            del self._followed[ring.key]

    def _wake(self, key: int) -> None:
        followed = self._followed.get(key)
        if followed is not None:
            followed[0].wake()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


@dataclass(eq=False)
class Exchange:
    """One request seen from the HTTP process that serves it: its ring and how it is going."""

    ring: Ring
    waker: Waker
    model_id: str = ""
    waited: float = 0.0  # seconds it waited for its model
    sent_ns: int = 0  # time.monotonic_ns() when it was sent to the worker
    admitted: bool = False
    admitting: asyncio.Future[Any] | None = None  # another process's wait for the supervisor
    leave: Callable[[], None] | None = None  # tells the supervisor its client left meanwhile
    failure: ApiError | None = None
    worker_gone: bool = False
    orphaned: bool = False  # its worker died before picking it up: safe to send again

    @property
    def running(self) -> bool:
        """Whether more bytes may come for the reader."""
        return self.failure is None and self.ring.state is RingState.RUNNING

    @property
    def let_go(self) -> bool:
        """Whether no worker will write into the ring any more."""
        if self.admitting is not None and not self.admitting.done():
            return False
        return not self.admitted or self.worker_gone or self.ring.state is not RingState.RUNNING

    @property
    def refused(self) -> bool:
        """Whether the worker it was sent to straight turned it away unread (workers/direct.py)."""
        return self.ring.state is RingState.REFUSED

    def sent(self, model_id: str, waited: float) -> None:
        self.admitted = True
        self.model_id, self.waited, self.sent_ns = model_id, waited, time.monotonic_ns()

    def lost_worker(self, error: ApiError, orphaned: bool) -> None:
        """Its worker exited before the answer was whole."""
        if self.ring.state is RingState.RUNNING:
            self.failure = error
            self.orphaned = orphaned and not self.ring.cancelled
        self.worker_gone = True
        self.waker.wake()


_segment_serials = itertools.count(1)  # 0 is the session index


def new_segment_name() -> str:
    return segment_name(os.getpid(), next(_segment_serials))


class Exchanges:
    """The process's pool of response rings (creating, attaching and unlinking a segment per
    request costs more than the rest of the router's work on a short request), and the
    exchanges that still wait for their worker to let go."""

    def __init__(self, watch: RingWatch, ring_bytes: int, keep: int = 64) -> None:
        self.watch = watch
        self._ring_bytes = ring_bytes
        self._keep = keep
        self._free: list[Ring] = []
        self._open: set[Exchange] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def open(self) -> Exchange:
        ring = self._free.pop() if self._free else self._new_ring()
        exchange = Exchange(ring, self.watch.follow(ring))
        self._open.add(exchange)
        return exchange

    def _new_ring(self) -> Ring:
        return Ring.create(new_segment_name(), self._ring_bytes, backpressure=True)

    def close(self, exchange: Exchange) -> None:
        """The client is done with it: stop the generation if it still runs, and take the ring
        back once its worker lets go."""
        if exchange.let_go:
            self._settle(exchange)
            return
        exchange.ring.cancel()
        admitting = exchange.admitting
        if exchange.leave is not None and admitting is not None and not admitting.done():
            exchange.leave()
        task = asyncio.get_running_loop().create_task(self._finish(exchange))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish(self, exchange: Exchange) -> None:
        if exchange.admitting is not None:  # its reader is not woken for the supervisor's word
            await asyncio.wait([exchange.admitting])
        while not exchange.let_go:
            await exchange.waker.wait()
        self._settle(exchange)

    def _settle(self, exchange: Exchange) -> None:
        if exchange not in self._open:
            return
        self._open.discard(exchange)
        self.watch.unfollow(exchange.ring)
        if len(self._free) < self._keep:
            exchange.ring.reset()
            self._free.append(exchange.ring)
        else:
            _destroy(exchange.ring)

    def cancel_all(self) -> None:
        for exchange in self._open:
            if exchange.running:
                exchange.ring.cancel()

    async def drain(self) -> None:
        """Stopping: end every generation and wait for the workers to let go."""
        self.cancel_all()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def close_rings(self) -> None:
        for exchange in list(self._open):
            self._open.discard(exchange)
            _destroy(exchange.ring)
        while self._free:
            _destroy(self._free.pop())


def _destroy(ring: Ring) -> None:
    ring.close()
    ring.unlink()
