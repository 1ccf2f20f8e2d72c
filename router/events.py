"""Live model events for `GET /models/sse`: one encoded line, fanned out to every subscriber.

Each subscriber has a bounded queue. One that falls too far behind is closed rather than
allowed to grow memory or to slow the router and the other subscribers down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

PING = b": ping\n\n"
PING_SECONDS = 15.0
QUEUE_EVENTS = 1024

_CLOSE = b""


class Subscriber:
    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(limit)
        self.closed = False

    def offer(self, line: bytes) -> bool:
        """Queue an event; False when the subscriber is too far behind and has been closed."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSE)

    async def next(self, timeout: float) -> bytes | None:
        """The next event, PING after `timeout` of silence, or None once closed."""
        try:
            line = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None if self.closed else PING
        return None if line is _CLOSE or self.closed else line


class EventHub:
    def __init__(self, limit: int = QUEUE_EVENTS) -> None:
        self._limit = limit
        self._subscribers: set[Subscriber] = set()
        self._taps: list[Callable[[bytes], None]] = []
        self._encode = msgspec.json.Encoder().encode

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self._limit)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.close()

    def publish(self, model: str, event: str, data: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {"model": model, "event": event}
        if data is not None:
            payload["data"] = data
        line = b"data: " + self._encode(payload) + b"\n\n"
        for tap in list(self._taps):
            tap(line)
        self.fan_out(line)

    def tap(self, tap: Callable[[bytes], None]) -> Callable[[], None]:
        """Every event line also goes to `tap` (another HTTP process's subscribers)."""
        self._taps.append(tap)
        return lambda: self._taps.remove(tap)

    def fan_out(self, line: bytes) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.offer(line):
                self._subscribers.discard(subscriber)

    def close(self) -> None:
        for subscriber in list(self._subscribers):
            self.unsubscribe(subscriber)
