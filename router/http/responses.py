"""The HTTP side of a ring: an ASGI response that follows it and notices a client that leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from router.events import PING_SECONDS, EventHub, Subscriber
from router.http.exchanges import Exchange, RingWatch
from router.metrics import RequestClock
from workers.errors import ApiError
from workers.ring import Media, OffsetLost, Ring, RingState

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_TYPE = (b"content-type", b"application/json")
READ_LIMIT = 1 << 20

log = logging.getLogger("llama-router")
T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class FollowingResponse:
    """An ASGI response that writes while it watches for the client to leave."""

    def __init__(self) -> None:
        self._left = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive))
        try:
            await self._respond(send)
        except OSError:
            pass  # the client went away while we wrote
        finally:
            watcher.cancel()
            self._finished()

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left.set()
        self._client_left()

    async def _respond(self, send: Send) -> None:
        raise NotImplementedError

    @property
    def _gone(self) -> bool:
        return self._left.is_set()

    def _client_left(self) -> None:
        pass

    def _finished(self) -> None:
        pass


class RingResponse(FollowingResponse):
    """Relays one request's ring. A request that a dying worker never picked up is sent again,
    through `resend`, to the model's next worker, instead of failing; no worker has run it, so
    it cannot be what killed them. So is one that a worker refused unread (sent straight to
    it as it stopped or slept). `resend` stops at the request's --timeout."""

    def __init__(
        self,
        exchange: Exchange,
        close: Callable[[Exchange], None],
        timeout: float,
        resend: Callable[[], Awaitable[Exchange]],
        clock: RequestClock,
    ) -> None:
        super().__init__()
        self.exchange = exchange
        self._clock = clock
        self._close = close
        self._closed = False
        self._timeout = timeout
        self._resend = resend
        self._quiet_since = time.monotonic()
        self._picked_up = False

    def _client_left(self) -> None:
        self.exchange.waker.wake()

    def _finished(self) -> None:
        if not self._closed:
            self._close(self.exchange)

    async def _respond(self, send: Send) -> None:
        try:
            await self._first_byte()
        except ApiError as error:  # sent again, but the model could not be had
            await send_json(send, error.status, error.json())
            return
        exchange, ring = self.exchange, self.exchange.ring
        if self._gone:
            return
        if ring.write_pos == 0 and exchange.failure is not None:
            await send_json(send, exchange.failure.status, exchange.failure.json())
            return
        if ring.media is Media.EVENT_STREAM:
            await self._stream(send)
        else:
            await self._send_collected(send)

    async def _first_byte(self) -> None:
        while True:
            exchange = self.exchange
            while exchange.ring.write_pos == 0 and exchange.running and not self._gone:
                await self._wait()
            if self._gone or not (exchange.orphaned or exchange.refused):
                return
            why = "had stopped taking requests" if exchange.refused else "died first"
            log.info("sending a request to %s again: its worker %s", exchange.model_id, why)
            self._close(exchange)
            self._closed = True
            replacement = await unless(self._resend(), self._left.wait())
            if replacement is None:
                return
            self.exchange, self._closed = replacement, False  # still within the first silence

    async def _send_collected(self, send: Send) -> None:
        exchange, ring = self.exchange, self.exchange.ring
        parts: list[bytes] = []
        offset = 0
        async for data in self._follow():
            parts.append(data)
            offset += len(data)
            ring.ack(offset)
        if self._gone:
            return
        if exchange.failure is not None:
            await send_json(send, exchange.failure.status, exchange.failure.json())
        else:
            await send_json(send, ring.status, b"".join(parts), [self._server_timing()])

    async def _stream(self, send: Send) -> None:
        clock = self._clock
        headers = [*SSE_HEADERS, self._server_timing()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        clock.streaming()
        offset = 0
        async for data in self._follow():
            await send({"type": "http.response.body", "body": data, "more_body": True})
            offset += len(data)
            self.exchange.ring.ack(offset)
            clock.relayed(data)
        if self._gone:
            return
        tail = self.exchange.failure.sse() if self.exchange.failure is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _server_timing(self) -> tuple[bytes, bytes]:
        """The head goes out; the supervisor's word on the request is in by now, or, sent from
        another process, may still be on its way (then no wait counts)."""
        exchange = self.exchange
        self._clock.model = exchange.model_id or self._clock.model
        self._clock.sent(exchange.waited, exchange.sent_ns or time.monotonic_ns())
        return self._clock.server_timing(exchange.ring.first_byte_ns)

    async def _follow(self) -> Any:
        """Yield the ring's bytes as they arrive until it ends, fails, or the client leaves."""
        exchange, ring = self.exchange, self.exchange.ring
        offset = 0
        while not self._gone:
            try:
                data = ring.read(offset, READ_LIMIT)
            except OffsetLost:
                exchange.failure = ApiError(500, "response overran its buffer")
                return
            if data:
                offset += len(data)
                self._quiet_since = time.monotonic()
                yield data
                continue
            if not exchange.running:
                if ring.write_pos == offset:
                    return
                continue
            await self._wait()

    async def _wait(self) -> None:
        """Wait for the worker; past --timeout of silence the request fails (and is cancelled)."""
        await self.exchange.waker.wait()
        admitting = self.exchange.admitting
        if admitting is not None and not admitting.done():
            self._quiet_since = time.monotonic()  # the supervisor's --timeout covers this wait
            return
        if not self._picked_up and self.exchange.ring.taken:
            # silence counts from when a slot took the request, not from its wait in line
            self._picked_up = True
            self._quiet_since = time.monotonic()
        silent = time.monotonic() - self._quiet_since
        if silent > self._timeout and self.exchange.running:
            model = self.exchange.model_id
            if self.exchange.ring.taken:
                message = f"model {model} sent nothing for {self._timeout:g} s"
                self.exchange.failure = ApiError(500, message)
            else:  # still in line behind the model's other requests: overload, not a fault
                message = f"model {model} was busy for {self._timeout:g} s, try again later"
                self.exchange.failure = ApiError(503, message)


async def unless(work: Awaitable[T], stop: Awaitable[object]) -> T | None:
    """`work`'s result (never None itself), or None if `stop` finished first and `work` was
    cancelled."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop)
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    media: bytes = JSON_TYPE[1],
) -> None:
    length = str(len(body)).encode()
    headers = [(b"content-type", media), (b"content-length", length), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class SessionResponse(FollowingResponse):
    """Follows a conversation session's ring from `offset`; a leaving client stops nothing.
    With a `clock`, it answers the request that started the session: its head comes from the
    worker (a JSON answer, or a stream)."""

    def __init__(
        self, watch: RingWatch, ring: Ring, offset: int, clock: RequestClock | None = None
    ) -> None:
        super().__init__()
        self._watch = watch
        self.ring = ring
        self.offset = offset
        self._clock = clock
        self._waker = watch.follow(ring)

    def _client_left(self) -> None:
        self._waker.wake()

    def _finished(self) -> None:
        self._watch.unfollow(self.ring)
        self.ring.close()

    async def _respond(self, send: Send) -> None:
        ring, clock = self.ring, self._clock
        if clock is not None:
            while ring.write_pos == 0 and ring.state is RingState.RUNNING and not self._gone:
                await self._waker.wait()
            timing = clock.server_timing(ring.first_byte_ns)
            if ring.media is Media.JSON:
                body = b"".join([data async for data in self._follow()])
                await send_json(send, ring.status, body, [timing])
                return
            headers = [*SSE_HEADERS, timing]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            clock.streaming()
        else:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async for data in self._follow():
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if clock is not None:
                clock.relayed(data)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self) -> AsyncIterator[bytes]:
        ring = self.ring
        while not self._gone:
            try:
                data = ring.read(self.offset, READ_LIMIT)
            except OffsetLost:
                yield ApiError(400, "Stream offset lost, please restart").sse()
                return
            if data:
                self.offset += len(data)
                yield data
            elif ring.state is not RingState.RUNNING:
                if ring.write_pos == self.offset:
                    return
            else:
                await self._waker.wait()


class EventsResponse(FollowingResponse):
    """`GET /models/sse`: the hub's events as they happen, with a ping in every quiet spell."""

    def __init__(self, hub: EventHub) -> None:
        super().__init__()
        self._hub = hub
        self._subscriber: Subscriber = hub.subscribe()

    def _client_left(self) -> None:
        self._hub.unsubscribe(self._subscriber)

    def _finished(self) -> None:
        self._hub.unsubscribe(self._subscriber)

    async def _respond(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while (line := await self._subscriber.next(PING_SECONDS)) is not None:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
