"""What an engine route produces: a JSON body at once, or SSE events pulled one by one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

encode_json = msgspec.json.encode


class Response:
    def __init__(self, status: int, body: bytes | None, events: Iterator[bytes] | None) -> None:
        self.status = status
        self.body = body
        self.events = events

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        return cls(status, encode_json(value), None)

    @classmethod
    def stream(cls, events: Iterator[bytes]) -> Response:
        return cls(200, None, events)


def sse(value: Any) -> bytes:
    return b"data: " + encode_json(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
