"""An HTTP process's end of the control channel to the supervisor (router/messages.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from multiprocessing.connection import Connection

from router.events import EventHub
from router.http.exchanges import Exchange
from router.messages import (
    CLIENT_LEFT,
    Admission,
    Admit,
    Admitted,
    Answer,
    Forward,
    HttpCodec,
    Leave,
    ModelEvent,
    PipeReader,
    Refused,
    RelayedError,
    Reply,
    Request,
    UpstreamRoutes,
    WorkerGone,
)
from router.upstream import UpstreamRoute
from workers.errors import ApiError

SUPERVISOR_GONE = ApiError(503, "the router is stopping")


class RemoteControl:
    admits_at_once = True

    def __init__(self, conn: Connection, events: EventHub) -> None:
        self._conn = conn
        self._events = events
        self._codec = HttpCodec()
        self._reader = PipeReader(conn, self._codec.decode, self._on_reply)
        self._calls = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        # requests in a worker, told here if it dies first; dropped with their responses
        self._exchanges: weakref.WeakValueDictionary[int, Exchange] = weakref.WeakValueDictionary()
        self._upstreams: dict[str, UpstreamRoute] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(conn.fileno(), self._read)

    def _read(self) -> None:
        if not self._reader.read():
            self._loop.remove_reader(self._conn.fileno())
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(SUPERVISOR_GONE)

    def _on_reply(self, reply: Reply) -> None:
        match reply:
            case ModelEvent():
                self._events.fan_out(reply.line)
            case UpstreamRoutes():
                self._upstreams = reply.routes
            case WorkerGone():
                exchange = self._exchanges.pop(reply.call, None)
                if exchange is not None:
                    exchange.lost_worker(RelayedError(reply.status, reply.body), reply.orphaned)
            case Admitted() | Refused() | Answer():
                exchange = self._exchanges.get(reply.call)
                if exchange is not None:
                    if isinstance(reply, Admitted):
                        exchange.sent(reply.model_id, reply.waited)
                    else:
                        del self._exchanges[reply.call]
                        if isinstance(reply, Refused) and reply.status != CLIENT_LEFT:
                            exchange.failure = RelayedError(reply.status, reply.body)
                waiting = self._waiting.pop(reply.call, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)
                # An Admitted changes nothing the exchange's reader waits for, and waking it
                # would cost a turn while the worker decodes; a closing exchange waits for
                # `admitting` itself (Exchanges._finish).
                if exchange is not None and not isinstance(reply, Admitted):
                    exchange.waker.wake()

    def _ask(self, request: Request, call: int) -> asyncio.Future[Reply]:
        waiting: asyncio.Future[Reply] = self._loop.create_future()
        self._waiting[call] = waiting
        try:
            self._conn.send_bytes(self._codec.encode(request))
        except OSError:
            waiting.set_exception(SUPERVISOR_GONE)
        return waiting

    async def admit(self, admission: Admission, exchange: Exchange) -> None:
        """Sends the request to the supervisor and returns at once: the answer comes into the
        ring whatever the supervisor replies, so the process waits for both together; a
        refusal ends the exchange with its error."""
        call = next(self._calls)
        self._exchanges[call] = exchange
        exchange.admitting = self._ask(Admit(call, admission, exchange.ring.name), call)
        exchange.leave = lambda: self._tell(Leave(call))
        if exchange.admitting.done():  # the pipe is closed: the router is stopping
            exchange.failure = SUPERVISOR_GONE

    async def start_session(self, admission: Admission) -> Admitted:
        call = next(self._calls)
        return _admitted(await self._ask(Admit(call, admission), call))

    async def forward(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        call = next(self._calls)
        reply = await self._ask(Forward(call, method, path, query, headers, body), call)
        assert isinstance(reply, Answer)
        return reply

    def upstream(self, name: str) -> UpstreamRoute | None:
        return self._upstreams.get(name)

    def _tell(self, request: Request) -> None:
        with contextlib.suppress(OSError):
            self._conn.send_bytes(self._codec.encode(request))


def _admitted(reply: Reply) -> Admitted:
    if isinstance(reply, Refused):
        raise RelayedError(reply.status, reply.body)
    assert isinstance(reply, Admitted)
    return reply
