"""The HTTP protocol under the app: uvicorn's httptools protocol with a bound on request heads,
writing response header names as llama-server does.

httptools accepts a request line and headers of any size and holds them in memory, so one client
could make the router buffer megabytes before any route runs. This protocol answers 431 in the
error shape and closes the connection once a head passes `--max-header-bytes`.

uvicorn writes header names in lower case. They are case-insensitive, but llama.cpp's own tests,
and clients written like them, look them up in a plain dict as `Access-Control-Allow-Origin`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from workers.errors import ApiError

LINGER_SECONDS = 1.0


class HeadTooLarge(Exception):
    pass


class CasedHeaderTransport:
    """The connection's transport, writing each response head with `Content-Type` casing."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        # uvicorn writes a response head whole, in one call, and its body apart
        if data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            status, *lines = data[:-4].split(b"\r\n")
            data = b"\r\n".join([status, *map(_cased_line, lines)]) + b"\r\n\r\n"
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _cased_line(line: bytes) -> bytes:
    name, colon, value = line.partition(b":")
    return _cased(name) + colon + value


@functools.lru_cache(maxsize=256)
def _cased(name: bytes) -> bytes:
    return b"-".join(part.capitalize() for part in name.split(b"-"))


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CasedHeaderTransport(transport))  # type: ignore[arg-type]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = False
        self._head_bytes = 0  # request line and headers, as parsed
        self._head_received = 0  # bytes received since the head began, while it is incomplete
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused head, read and dropped until the connection closes
        super().data_received(data)
        if self._head_open and not self._refused:
            # a single endless header is buffered inside httptools, where no callback sees it
            self._head_received += len(data)
            if self._head_received > self.max_head_bytes:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = self._head_received = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parser error, including the HeadTooLarge raised in a callback
        if self._head_bytes > self.max_head_bytes:
            self._refuse()
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        body = ApiError(431, f"request headers are larger than {self.max_head_bytes} bytes").json()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        # Closing with unread input would reset the connection and could destroy the answer
        # before the client reads it; so finish writing, and drain its input for a moment
        # (or until it closes its side, which closes the transport).
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def bounded_head_protocol(max_head_bytes: int) -> type[BoundedHeadProtocol]:
    """The protocol class uvicorn instantiates per connection, with this bound."""
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes})
