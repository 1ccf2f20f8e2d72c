"""Typed messages on the pipe between an HTTP process and the supervisor's process.

Only control crosses here: a request asks to be admitted to a model and hears where its answer
is, or why not (or, sent straight to its worker, says where it went); a client that leaves says
so; the routes that read or change the model table are forwarded whole; model events come back
for `/models/sse`. Response bytes never cross: a model worker writes them into a ring the HTTP
process reads (workers/ring.py), and wakes that process itself (workers/notes.py).
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

import msgspec

from router.upstream import UpstreamRoute
from workers.errors import ApiError

T = TypeVar("T")


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class Admission(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An inference request, as the supervisor needs it to find, load and lease its model."""

    route: str
    model: str | None
    body: bytes
    autoload: bool
    timeout: float  # how long it may wait for its model
    conversation_id: str = ""  # a resumable session: its generation belongs to the supervisor


# HTTP process -> supervisor


class Admit(_Message, tag="admit", frozen=True):
    """Send `admission` to its model, its answer into `ring` (a session: into the session's)."""

    call: int
    admission: Admission
    ring: str = ""


class SentDirect(_Message, tag="sent_direct", frozen=True):
    """The request of `call` went straight to the worker of pid `worker_pid` (a DirectRoute's)
    as `request_id`, its answer into `ring` (then at its `uses`-th use): count the model busy
    until the worker lets go, and tell `call` if that worker dies first."""

    call: int
    model_id: str
    worker_pid: int
    request_id: int
    ring: str
    uses: int


class Leave(_Message, tag="leave", frozen=True):
    """The client of `call` left while it waited: drop its claim on the model."""

    call: int


class Forward(_Message, tag="forward", frozen=True):
    """A request to a route that reads or changes the model table, served by the supervisor."""

    call: int
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


Request = Admit | SentDirect | Leave | Forward


# supervisor -> HTTP process


class Admitted(_Message, tag="admitted", frozen=True):
    """The request is in its model's worker. For a session, `ring` is the session's ring."""

    call: int
    model_id: str
    waited: float
    ring: str = ""


# The status of the last word on a request whose client left while it waited (nginx's).
CLIENT_LEFT = 499


class Refused(_Message, tag="refused", frozen=True):
    """The request could not be admitted: an error body for the client (none, CLIENT_LEFT)."""

    call: int
    status: int
    body: bytes


class WorkerGone(_Message, tag="worker_gone", frozen=True):
    """The worker exited before the answer was whole; `orphaned` when it never picked the
    request up (then it is safe to send again)."""

    call: int
    status: int
    body: bytes
    orphaned: bool


class Answer(_Message, tag="answer", frozen=True):
    """A forwarded route's whole response."""

    call: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class ModelEvent(_Message, tag="model_event", frozen=True):
    """One `/models/sse` line, for the HTTP process's own subscribers."""

    line: bytes


class UpstreamRoutes(_Message, tag="upstream_routes", frozen=True):
    """Every name of the models other servers serve, whose requests the HTTP process proxies
    itself; sent at its start and after every new catalog."""

    routes: dict[str, UpstreamRoute]


class DirectRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a request for a loaded, awake model may go past the supervisor (workers/direct.py)."""

    model_id: str
    worker_pid: int
    address: str


class DirectRoutes(_Message, tag="direct_routes", frozen=True):
    """Every name of the models that take requests straight now; sent whenever that changes.
    It may be a moment late: the worker refuses what it no longer takes."""

    routes: dict[str, DirectRoute]


Reply = Admitted | Refused | WorkerGone | Answer | ModelEvent | UpstreamRoutes | DirectRoutes


class SupervisorCodec:
    """The supervisor's end: it reads requests and writes replies."""

    def __init__(self) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(Request).decode


class HttpCodec:
    """An HTTP process's end: it reads replies and writes requests."""

    def __init__(self) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(Reply).decode


def read_when_ready(
    loop: asyncio.AbstractEventLoop, conn: Connection, callback: Callable[[], None]
) -> None:
    """Call `callback` whenever `conn` has bytes to read. uvloop (libuv) makes the file it
    watches non-blocking, and a Connection moves a message larger than the socket's buffer
    only on a blocking one: it would read half of it, or write half and fail, and every later
    message on that pipe would be garbage."""
    loop.add_reader(conn.fileno(), callback)
    os.set_blocking(conn.fileno(), True)


class PipeReader(Generic[T]):
    """Handles the messages waiting on `conn` when the loop finds its reader ready. Whether
    more wait is asked of a poll object made once: `Connection.poll` builds a selector per
    call, which costs more than the read, and a relayed request paid it twice on each end."""

    def __init__(
        self, conn: Connection, decode: Callable[[bytes], T], handle: Callable[[T], None]
    ) -> None:
        self._conn, self._decode, self._handle = conn, decode, handle
        self._more = select.poll()
        self._more.register(conn.fileno(), select.POLLIN)

    def read(self) -> bool:
        """False once the other end is gone."""
        try:
            self._handle(self._decode(self._conn.recv_bytes()))
            while self._more.poll(0):
                self._handle(self._decode(self._conn.recv_bytes()))
        except (EOFError, OSError):
            return False
        return True


class RelayedError(ApiError):
    """An error the supervisor answered, passed on to the client byte for byte."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            message = str(msgspec.json.decode(body)["error"]["message"])
        except (msgspec.DecodeError, KeyError, TypeError):
            message = body.decode(errors="replace")
        super().__init__(status, message)
        self._body = body

    def json(self) -> bytes:
        return self._body
