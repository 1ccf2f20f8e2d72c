"""Requests into workers, responses out of their rings.

Each request gets its own ring. The worker writes the response bytes there and sends a `Wrote`
note; the note wakes the request's `Waker`, and a bounded wait covers a note that never comes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from router.processes import WorkerProcess
from router.supervisor import Lease
from workers.errors import ApiError
from workers.protocol import Infer
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


@dataclass(eq=False)
class Exchange:
    """One request in a worker: its ring, its waker, and the lease that keeps the model busy."""

    request_id: int
    ring: Ring
    lease: Lease
    waker: Waker = field(default_factory=Waker)
    failure: ApiError | None = None
    pooled: bool = True
    orphaned: bool = False  # failed before any worker picked it up: safe to send again

    @property
    def worker(self) -> WorkerProcess:
        return self.lease.worker

    @property
    def running(self) -> bool:
        """Whether more bytes may come for the reader."""
        return self.failure is None and self.ring.state is RingState.RUNNING

    @property
    def let_go(self) -> bool:
        """Whether the worker is done with the ring, so that it may serve another request."""
        # an orphan was never picked up: not sent, or its worker is gone
        return self.orphaned or self.ring.state is not RingState.RUNNING or not self.worker.alive


_segment_serials = itertools.count(1)  # 0 is the session index


def new_segment_name() -> str:
    return segment_name(os.getpid(), next(_segment_serials))


class RingPool:
    """Response rings are reused: creating, attaching and unlinking a segment per request
    costs more than the rest of the router's work on a short request."""

    def __init__(self, ring_bytes: int, keep: int) -> None:
        self._ring_bytes = ring_bytes
        self._keep = keep
        self._free: list[Ring] = []

    def take(self) -> Ring:
        if self._free:
            return self._free.pop()
        return Ring.create(new_segment_name(), self._ring_bytes, backpressure=True)

    def give_back(self, ring: Ring) -> None:
        if len(self._free) < self._keep:
            ring.reset()
            self._free.append(ring)
        else:
            _destroy(ring)

    def close(self) -> None:
        while self._free:
            _destroy(self._free.pop())


def _destroy(ring: Ring) -> None:
    ring.close()
    ring.unlink()


class Relay:
    def __init__(self, ring_bytes: int, release: Callable[[Lease], None], keep: int = 64) -> None:
        self._rings = RingPool(ring_bytes, keep)
        self._release = release
        self._serial = itertools.count(1)
        self._open: dict[int, Exchange] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def send(
        self,
        lease: Lease,
        route: str,
        body: bytes,
        ring: Ring | None = None,
        event_ids: bool = False,
        waker: Waker | None = None,
    ) -> Exchange:
        """Send a request to the lease's worker; its answer lands in `ring` or a pooled one."""
        request_id = next(self._serial)
        exchange = Exchange(request_id, ring or self._rings.take(), lease, pooled=ring is None)
        if waker is not None:
            exchange.waker = waker
        self._open[request_id] = exchange
        infer = Infer(
            request_id, route, body, exchange.ring.name, event_ids=event_ids, pooled=ring is None
        )
        if not lease.worker.send(infer):
            exchange.orphaned = True
            exchange.failure = ApiError(500, f"model {lease.model.id} is not running")
        return exchange

    def release_lease(self, lease: Lease) -> None:
        self._release(lease)

    def wake(self, request_id: int) -> None:
        exchange = self._open.get(request_id)
        if exchange is not None:
            exchange.waker.wake()

    def worker_gone(self, worker: WorkerProcess) -> None:
        """Fail every request still running in a worker that has exited."""
        for exchange in list(self._open.values()):
            if exchange.worker is worker and exchange.running:
                # a cancelled one (its client left, or the router is stopping) is not sent again
                exchange.orphaned = not exchange.ring.taken and not exchange.ring.cancelled
                exchange.failure = ApiError(
                    500, f"model {exchange.lease.model.id} worker exited (code {worker.exit_code})"
                )
                exchange.waker.wake()

    def close(self, exchange: Exchange) -> None:
        """The client is done with it: stop the generation if it still runs, then clean up."""
        if exchange.let_go:
            self.settle(exchange)
            return
        exchange.ring.cancel()
        task = asyncio.get_running_loop().create_task(self._finish(exchange))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish(self, exchange: Exchange) -> None:
        # The model stays busy, and the ring taken, until the worker has really let go.
        while not exchange.let_go:
            await exchange.waker.wait()
        self.settle(exchange)

    def settle(self, exchange: Exchange) -> None:
        """The worker let go: the model is free again, and a pooled ring goes back."""
        self._release(exchange.lease)
        self._open.pop(exchange.request_id, None)
        if exchange.pooled:
            self._rings.give_back(exchange.ring)

    def cancel_all(self) -> None:
        for exchange in list(self._open.values()):
            if exchange.running and exchange.pooled:
                exchange.ring.cancel()

    async def drain(self) -> None:
        self.cancel_all()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def close_rings(self) -> None:
        self._rings.close()
