"""Resumable conversation sessions: a ring per conversation id, published in a shared index.

A session's generation belongs to the session, not to the HTTP request that started it: the
client may leave and come back (`GET /v1/stream`), several readers may follow it, and only a
DELETE or a new request with the same id stops it. Finished sessions are dropped after a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from router.control.dispatch import Dispatch, Dispatched
from router.control.redis_mirror import RedisMirror
from router.control.supervisor import Supervisor
from router.control.table import Model
from router.control.upstream_sessions import copy_upstream
from router.http.exchanges import new_segment_name
from router.upstream import UpstreamClient, UpstreamRoute
from workers.errors import ApiError
from workers.notes import NoteSender
from workers.ring import Ring, RingState
from workers.session_index import MAX_ID_BYTES, SessionEntry, SessionIndex, SessionState, index_name

log = logging.getLogger("llama-router")

_GC_SECONDS = 5.0
# A worker that exits is reaped within a turn of the loop; then its model loads again.
RESEND_PAUSE = 0.05


@dataclass(eq=False)
class Session:
    conversation_id: str
    slot: int
    ring: Ring
    model: Model
    started_ns: int = field(default_factory=time.time_ns)
    state: SessionState = SessionState.PENDING
    completed_ns: int = 0
    dispatched: Dispatched | None = None
    waited: float = 0.0  # seconds it waited for its model
    sent: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None
    copying: bool = False  # from an upstream server, by the main process
    retired: bool = False
    closed: bool = False

    def entry(self) -> SessionEntry:
        return SessionEntry(
            self.slot,
            self.conversation_id,
            self.ring.name,
            self.state,
            self.started_ns,
            self.completed_ns,
        )

    def ended(self) -> tuple[bool, int]:
        """Whether it is done, and when (0 while it runs). Its readers see the end in the ring
        before the worker's `Ended` reaches the session: a client that has its last byte and
        looks the session up finds it done."""
        done = self.state is SessionState.DONE or self.ring.state is not RingState.RUNNING
        return done, self.completed_ns or (self.ring.ended_ns if done else 0)

    def lookup_row(self) -> dict[str, Any]:
        done, completed_ns = self.ended()
        return {
            "conversation_id": self.conversation_id,
            "is_done": done,
            "total_bytes": self.ring.write_pos,
            "started_at": self.started_ns // 1_000_000_000,
            "completed_at": completed_ns // 1_000_000_000,
        }


def check_conversation_id(value: str) -> str:
    if not value:
        raise ApiError(400, "Missing conversation id in path")
    if len(value.encode()) > MAX_ID_BYTES or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(400, f"conversation id must be printable and at most {MAX_ID_BYTES} bytes")
    return value


class Streams:
    def __init__(
        self,
        supervisor: Supervisor,
        dispatch: Dispatch,
        upstream_client: UpstreamClient,
        ring_bytes: int,
        ttl: float,
        slots: int = 4096,
        mirror: RedisMirror | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._dispatch = dispatch
        self._upstream_client = upstream_client
        self._notes: NoteSender | None = None  # wakes the readers of rings copied from upstreams
        self._ring_bytes = ring_bytes
        self._ttl_ns = int(ttl * 1e9)
        self.index = SessionIndex.create(index_name(os.getpid()), slots)
        self._free_slots = list(range(slots - 1, -1, -1))
        self._sessions: dict[str, Session] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._gc: asyncio.Task[None] | None = None
        self.mirror = mirror  # the copy in Redis that other replicas read

    def get(self, conversation_id: str) -> Session | None:
        return self._sessions.get(conversation_id)

    # --- starting -------------------------------------------------------------------------------

    def start(
        self,
        conversation_id: str,
        model: Model,
        route: str,
        body: bytes,
        autoload: bool,
    ) -> Session:
        check_conversation_id(conversation_id)
        self.delete(conversation_id)
        if not self._free_slots:
            self._evict_oldest_done()
        if not self._free_slots:
            raise ApiError(503, "too many live conversation sessions, try again later")
        ring = Ring.create(new_segment_name(), self._ring_bytes, backpressure=False)
        session = Session(conversation_id, self._free_slots.pop(), ring, model)
        self._sessions[conversation_id] = session
        if self.mirror is not None:
            self.mirror.begin(session)
        self._publish(session)
        session.task = asyncio.get_running_loop().create_task(
            self._run(session, route, body, autoload)
        )
        self._runs.add(session.task)
        session.task.add_done_callback(self._runs.discard)
        return session

    async def _run(self, session: Session, route: str, body: bytes, autoload: bool) -> None:
        upstream = session.model.spec.upstream
        if upstream is not None:
            await self._copy(session, UpstreamRoute(session.model.id, upstream), route, body)
        else:
            await self._generate(session, route, body, autoload)

    async def _copy(
        self, session: Session, route: UpstreamRoute, api_route: str, body: bytes
    ) -> None:
        session.copying = True
        self._went_live(session)
        if self._notes is None:
            self._notes = NoteSender(os.getpid(), timeout=0)  # on the supervisor's loop
        client, ring = self._upstream_client, session.ring
        copy = copy_upstream(client, route, api_route, body, ring, self._notes)
        with contextlib.suppress(asyncio.CancelledError):  # delete() stopped it
            await copy
        session.copying = False
        self._ended(session)

    async def _generate(self, session: Session, route: str, body: bytes, autoload: bool) -> None:
        while session.dispatched is None:
            try:
                lease = await self._supervisor.acquire(session.model, autoload)
            except asyncio.CancelledError:
                return  # delete() cancelled it, and has retired the session
            except ApiError as error:
                session.sent.set_exception(error)
                self._retire(session)
                return
            session.waited = lease.waited
            session.dispatched = self._dispatch.send(
                lease, route, body, ring=session.ring, event_ids=True
            )
            if session.dispatched is None:  # its worker just went: wait for the next
                await asyncio.sleep(RESEND_PAUSE)
        self._went_live(session)
        gone = await session.dispatched.finished
        if session.ring.state is RingState.RUNNING:  # the worker died mid-answer
            failure = gone.error if gone else ApiError(500, "the model's worker exited")
            session.ring.write(failure.sse())
            session.ring.finish(RingState.FAILED)
        self._ended(session)

    def _went_live(self, session: Session) -> None:
        session.state = SessionState.LIVE
        self._publish(session)
        session.sent.set_result(None)

    def _ended(self, session: Session) -> None:
        session.state = SessionState.DONE
        session.completed_ns = session.ring.ended_ns or time.time_ns()
        if session.retired:
            self._destroy(session)
        else:
            self._publish(session)

    # --- ending ---------------------------------------------------------------------------------

    def delete(self, conversation_id: str) -> None:
        """Stop the generation (or the wait for its model) and forget the session."""
        session = self._sessions.get(conversation_id)
        if session is None:
            return
        if (session.dispatched is None or session.copying) and session.task is not None:
            session.task.cancel()
        elif session.ring.state is RingState.RUNNING:
            session.ring.cancel()
        self._retire(session)

    def _retire(self, session: Session) -> None:
        """Unlist it now; its ring goes once no worker writes to it any more."""
        if self.mirror is not None:
            self.mirror.retire(session)
        if self._sessions.get(session.conversation_id) is session:
            del self._sessions[session.conversation_id]
            self.index.clear(session.slot)
            self._free_slots.append(session.slot)
        session.retired = True
        if not session.sent.done():  # stopped while it waited for its model
            session.sent.set_exception(
                ApiError(400, "request cancelled by a stop while the model was loading")
            )
        waiting = session.dispatched is None and not session.copying
        if waiting or session.state is SessionState.DONE:
            self._destroy(session)

    def _destroy(self, session: Session) -> None:
        if session.closed:
            return
        if session.ring.state is RingState.RUNNING:
            session.ring.finish(RingState.FAILED)
        session.closed = True
        session.ring.close()
        session.ring.unlink()

    def _evict_oldest_done(self) -> None:
        done = [s for s in self._sessions.values() if s.state is SessionState.DONE]
        if done:
            self._retire(min(done, key=lambda session: session.completed_ns))

    def _publish(self, session: Session) -> None:
        self.index.write(session.slot, session.entry())
        if self.mirror is not None:
            self.mirror.changed(session)

    # --- lookup and time ------------------------------------------------------------------------

    def held(self) -> tuple[int, int]:
        """How many sessions are listed, and the bytes written into them."""
        sessions = list(self._sessions.values())
        return len(sessions), sum(session.ring.write_pos for session in sessions)

    def lookup(self, conversation_ids: list[str]) -> list[dict[str, Any]]:
        rows = []
        for wanted in conversation_ids:
            if not wanted:
                continue
            prefix = wanted + "::"
            rows += [
                session.lookup_row()
                for conversation_id, session in self._sessions.items()
                if conversation_id == wanted or conversation_id.startswith(prefix)
            ]
        return rows

    def start_gc(self) -> None:
        self._gc = asyncio.get_running_loop().create_task(self._collect_forever())

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(min(_GC_SECONDS, self._ttl_ns / 2e9))
            self.collect(time.time_ns())

    def collect(self, now_ns: int) -> None:
        for session in list(self._sessions.values()):
            if session.state is SessionState.DONE and now_ns - session.completed_ns >= self._ttl_ns:
                self._retire(session)

    def stop_all(self) -> None:
        """Stop every generation and unlist every session (readers see their streams end)."""
        if self._gc is not None:
            self._gc.cancel()
        for conversation_id in list(self._sessions):
            self.delete(conversation_id)

    async def close(self) -> None:
        """Once the workers are gone: wait for the sessions to wind up, remove the index."""
        await asyncio.gather(*self._runs, return_exceptions=True)
        if self._notes is not None:
            self._notes.close()
        if self.mirror is not None:
            await self.mirror.close()
        self.index.close()
        self.index.unlink()
