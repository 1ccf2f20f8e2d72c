"""Requests into workers, seen from the supervisor: a request holds its model's lease until
the worker lets go of its ring, whichever HTTP process reads that ring.

The worker tells the supervisor over its pipe when it is done with a request (`Ended`); a
worker that exits instead fails the requests it still had, and those it never picked up may
be sent again. A request an HTTP process sent straight to a worker is adopted here once that
process says so, and then counts the same.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import NamedTuple

from router.control.processes import WorkerProcess
from router.control.table import Lease
from workers.errors import ApiError
from workers.protocol import Infer
from workers.ring import AttachedRings, Ring, RingState, owner_of, segments_of


class Gone(NamedTuple):
    """How a request ended when its worker exited first."""

    error: ApiError
    orphaned: bool  # never picked up: safe to send again


@dataclass(eq=False)
class Dispatched:
    request_id: int
    ring: Ring
    lease: Lease
    # None once the worker let go of the ring, Gone if it exited first
    finished: asyncio.Future[Gone | None]
    uses: int  # the ring's, when it was sent


class Dispatch:
    def __init__(self, release: Callable[[Lease], None]) -> None:
        self._release = release
        self._serial = itertools.count(1)
        self._open: dict[int, Dispatched] = {}
        self._attached = AttachedRings()

    def ring(self, name: str) -> Ring:
        """Another HTTP process's ring (FileNotFoundError when it is gone)."""
        return self._attached.get(name)

    def send(
        self, lease: Lease, route: str, body: bytes, ring: Ring, event_ids: bool = False
    ) -> Dispatched | None:
        """Send a request to the lease's worker, its answer into `ring`. None (and the lease
        released) when the worker can no longer hear it. A session's ring (`event_ids`) is
        unlinked once it ends, so the worker does not keep it mapped."""
        request_id = next(self._serial)
        infer = Infer(request_id, route, body, ring.name, event_ids=event_ids, pooled=not event_ids)
        if not lease.worker.send(infer):
            self._release(lease)
            return None
        return self._opened(lease, request_id, ring, ring.uses)

    def adopt(self, lease: Lease, request_id: int, ring: Ring, uses: int) -> Dispatched:
        """A request an HTTP process sent to the lease's worker itself (workers/direct.py), its
        ring then at its `uses`-th use. The worker's `Ended` may have come first: a ring that
        has moved on is settled at once."""
        dispatched = self._opened(lease, request_id, ring, uses)
        if ring.state is not RingState.RUNNING or ring.uses != uses:
            self.ended(request_id)
        return dispatched

    def _opened(self, lease: Lease, request_id: int, ring: Ring, uses: int) -> Dispatched:
        finished: asyncio.Future[Gone | None] = asyncio.get_running_loop().create_future()
        dispatched = Dispatched(request_id, ring, lease, finished, uses)
        self._open[request_id] = dispatched
        return dispatched

    def ended(self, request_id: int) -> bool:
        """Whether the request was one counted here (a direct one may end before it is)."""
        dispatched = self._open.pop(request_id, None)
        if dispatched is None:
            return False
        self._settle(dispatched, None)
        return True

    def settle_finished(self) -> None:
        """Release the requests whose worker has finished their ring, before its `Ended`: the
        ring says so, or its HTTP process has already reset it for another request (which it
        does only once the worker let go)."""
        for dispatched in list(self._open.values()):
            ring = dispatched.ring
            if ring.state is not RingState.RUNNING or ring.uses != dispatched.uses:
                self.ended(dispatched.request_id)

    def worker_gone(self, worker: WorkerProcess) -> None:
        """Fail every request still running in a worker that has exited."""
        for dispatched in list(self._open.values()):
            if dispatched.lease.worker is not worker:
                continue
            del self._open[dispatched.request_id]
            ring = dispatched.ring
            # a cancelled one (its client left, or the router is stopping) is not sent again
            orphaned = not ring.taken and not ring.cancelled
            message = f"model {dispatched.lease.model.id} worker exited (code {worker.exit_code})"
            self._settle(dispatched, Gone(ApiError(500, message), orphaned))

    def _settle(self, dispatched: Dispatched, gone: Gone | None) -> None:
        self._release(dispatched.lease)
        if not dispatched.finished.done():
            dispatched.finished.set_result(gone)

    def cancel_all(self) -> None:
        for dispatched in self._open.values():
            dispatched.ring.cancel()

    async def drain(self) -> None:
        """Stopping: end every generation and wait for the workers to let go."""
        self.cancel_all()
        await asyncio.gather(*(d.finished for d in self._open.values()), return_exceptions=True)

    def cancel_from(self, owner_pid: int) -> list[asyncio.Future[Gone | None]]:
        """An HTTP process died: end the generations of its rings, those it sent straight to a
        worker and had not told of yet included; what to wait for (those counted here)."""
        for name in segments_of(owner_pid):
            with suppress(FileNotFoundError, ValueError):
                self._attached.get(name).cancel()
        mine = [d for d in self._open.values() if owner_of(d.ring.name) == owner_pid]
        for dispatched in mine:
            dispatched.ring.cancel()
        return [dispatched.finished for dispatched in mine]

    def forget(self, owner_pid: int) -> None:
        """Unmap a dead HTTP process's rings."""
        self._attached.forget(owner_pid)
