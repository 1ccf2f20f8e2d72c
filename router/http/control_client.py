"""An HTTP process's end of the control channel to the supervisor (router/messages.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
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
    DirectRoute,
    DirectRoutes,
    Forward,
    HttpCodec,
    Leave,
    ModelEvent,
    PipeReader,
    Refused,
    RelayedError,
    Reply,
    Request,
    SentDirect,
    UpstreamRoutes,
    WorkerGone,
    read_when_ready,
)
from router.metrics import RouterMetrics
from router.upstream import UpstreamRoute
from workers.direct import DirectSender
from workers.errors import ApiError
from workers.protocol import Infer
from workers.ring import Ring, RingState

SUPERVISOR_GONE = ApiError(503, "the router is stopping")
# How long after a request went straight to its worker the supervisor is told of it, if it
# still runs then. Telling it at once woke the supervisor's process beside the worker on every
# request, for 0.2 ms of a 1.5 ms one on two cores; one that ends sooner the supervisor learns
# of from the worker's `Ended`.
TELL_DIRECT_AFTER = 0.05


class RemoteControl:
    admits_at_once = True

    def __init__(self, conn: Connection, events: EventHub, metrics: RouterMetrics) -> None:
        self._conn = conn
        self._events = events
        self._metrics = metrics
        self._codec = HttpCodec()
        self._reader = PipeReader(conn, self._codec.decode, self._on_reply)
        self._calls = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        # requests in a worker, told here if it dies first; dropped with their responses
        self._exchanges: weakref.WeakValueDictionary[int, Exchange] = weakref.WeakValueDictionary()
        self._upstreams: dict[str, UpstreamRoute] = {}
        self._direct: dict[str, DirectRoute] = {}
        self._direct_sender = DirectSender()
        self._pid = os.getpid()
        self._untold: list[tuple[SentDirect, Ring]] = []  # sent straight, not yet told of
        self._loop = asyncio.get_running_loop()
        read_when_ready(self._loop, conn, self._read)

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
            case DirectRoutes():
                self._direct = reply.routes
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
        """Sends the request on and returns at once: straight to its worker when the model
        takes requests so, else to the supervisor, whose answer the process then waits for
        together with the ring's; a refusal ends the exchange with its error."""
        call = next(self._calls)
        self._exchanges[call] = exchange
        if self._send_direct(call, admission, exchange):
            return
        exchange.admitting = self._ask(Admit(call, admission, exchange.ring.name), call)
        exchange.leave = lambda: self._tell(Leave(call))
        if exchange.admitting.done():  # the pipe is closed: the router is stopping
            exchange.failure = SUPERVISOR_GONE

    def _send_direct(self, call: int, admission: Admission, exchange: Exchange) -> bool:
        """Straight to the worker of a model that takes requests so (workers/direct.py), the
        supervisor told afterwards; False when the request must go through the supervisor."""
        route = self._direct.get(admission.model) if admission.model else None
        if route is None:
            return False
        ring = exchange.ring
        request_id = self._pid << 32 | call  # unlike any other process's, or the supervisor's
        infer = Infer(request_id, admission.route, admission.body, ring.name)
        if not self._direct_sender.send(route.address, infer):
            return False
        exchange.sent(route.model_id, 0.0)
        self._metrics.queue_wait.labels(route.model_id).observe(0.0)
        uses = ring.uses
        sent = SentDirect(call, route.model_id, route.worker_pid, request_id, ring.name, uses)
        if not self._untold:
            self._loop.call_later(TELL_DIRECT_AFTER, self._tell_direct)
        self._untold.append((sent, ring))
        return True

    def _tell_direct(self) -> None:
        """Tell the supervisor of the requests sent straight that still run, to count their
        models busy and to hear if their workers die first."""
        for sent, ring in self._untold:
            if ring.uses == sent.uses and ring.state is RingState.RUNNING:
                self._tell(sent)
        self._untold.clear()

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
