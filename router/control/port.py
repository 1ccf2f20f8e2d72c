"""The supervisor's ends of the control channel: `LocalControl` for the routes of the main
process, and a `ControlPort` per other HTTP process, reading its pipe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
from collections import deque
from collections.abc import Callable, MutableMapping
from multiprocessing.connection import Connection
from typing import Any

from starlette.applications import Starlette

from router.control.admission import admit, admit_at_once, start_session
from router.control.dispatch import Dispatched, Gone
from router.control.state import RouterState
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
    Leave,
    ModelEvent,
    PipeReader,
    Refused,
    Reply,
    Request,
    SentDirect,
    SupervisorCodec,
    UpstreamRoutes,
    WorkerGone,
    read_when_ready,
)
from router.upstream import UpstreamRoute
from workers.errors import ApiError

log = logging.getLogger("llama-router")

OUTBOX_BYTES = 64 << 20
# A message this small goes into a pipe that polls writable without blocking: Linux reports a
# stream socket writable while at most a quarter of its send buffer (200 KiB) is in use.
AT_ONCE_BYTES = 16 << 10


class LocalControl:
    """The main process's routes admit their requests with a plain call."""

    admits_at_once = False  # a request waits here for its model

    def __init__(self, state: RouterState) -> None:
        self._state = state

    async def admit(self, admission: Admission, exchange: Exchange) -> None:
        dispatched = await admit(self._state, admission, exchange.ring)
        exchange.sent(dispatched.lease.model.id, dispatched.lease.waited)

        def finished(future: asyncio.Future[Gone | None]) -> None:
            gone = future.result()
            if gone is not None:
                exchange.lost_worker(gone.error, gone.orphaned)

        dispatched.finished.add_done_callback(finished)

    async def start_session(self, admission: Admission) -> Admitted:
        session = await start_session(self._state, admission)
        return Admitted(0, session.model.id, session.waited, session.ring.name)

    def upstream(self, name: str) -> UpstreamRoute | None:
        model = self._state.supervisor.find(name)
        if model is None or model.spec.upstream is None:
            return None
        return UpstreamRoute(model.id, model.spec.upstream)


class ControlPort:
    """One HTTP process's requests, served in the supervisor's process, and the model events
    sent back to it."""

    def __init__(
        self, state: RouterState, app: Starlette, conn: Connection, on_stuck: Callable[[], None]
    ) -> None:
        self._state = state
        self._app = app
        self._conn = conn
        self._outbox = Outbox(conn, on_stuck)
        self._codec = SupervisorCodec()
        self._reader = PipeReader(conn, self._codec.decode, self._on_request)
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._untap = state.events.tap(self._send_event)
        self._stop_reading_catalog = state.supervisor.on_catalog(self._send_upstreams)
        self._send_upstreams()
        self._stop_reading_routes = state.supervisor.on_direct_routes(self._send_direct_routes)
        read_when_ready(self._loop, conn, self._read)

    def _read(self) -> None:
        if not self._reader.read():
            self.close()

    def _on_request(self, request: Request) -> None:
        match request:
            case Admit() if not request.admission.conversation_id and self._admit_at_once(request):
                pass
            case Admit():
                self._spawn(request.call, self._admit(request))
            case SentDirect():
                self._adopt(request)
            case Forward():
                self._spawn(request.call, self._forward(request))
            case Leave():
                task = self._tasks.get(request.call)
                if task is not None:
                    task.cancel()

    def _spawn(self, call: int, work: Any) -> None:
        task = self._loop.create_task(work)
        self._tasks[call] = task
        task.add_done_callback(lambda _: self._tasks.pop(call, None))

    def _admit_at_once(self, request: Admit) -> bool:
        """Admitted as the pipe is read, when nothing has to wait: no task, no turn."""
        try:
            ring = self._state.dispatch.ring(request.ring)
        except FileNotFoundError:
            return False
        dispatched = admit_at_once(self._state, request.admission, ring)
        if dispatched is None:
            return False
        self._watch(request.call, dispatched)
        lease = dispatched.lease
        self._send(Admitted(request.call, lease.model.id, lease.waited))
        return True

    async def _admit(self, request: Admit) -> None:
        admission, call = request.admission, request.call
        reply: Reply
        try:
            if admission.conversation_id:
                session = await start_session(self._state, admission)
                reply = Admitted(call, session.model.id, session.waited, session.ring.name)
            else:
                ring = self._state.dispatch.ring(request.ring)
                dispatched = await admit(self._state, admission, ring)
                self._watch(call, dispatched)
                reply = Admitted(call, dispatched.lease.model.id, dispatched.lease.waited)
        except ApiError as error:
            reply = Refused(call, error.status, error.json())
        except FileNotFoundError:
            reply = Refused(call, 500, ApiError(500, "response ring is gone").json())
        except asyncio.CancelledError:  # the client left: its process waits for a last word
            reply = Refused(call, CLIENT_LEFT, b"")
        self._send(reply)

    def _adopt(self, sent: SentDirect) -> None:
        try:
            ring = self._state.dispatch.ring(sent.ring)
        except FileNotFoundError:
            return  # its process is gone, and the generation with its ring
        lease = self._state.supervisor.adopt(sent.model_id, sent.worker_pid)
        if lease is None:  # the worker exited, with or without it
            error = ApiError(500, f"model {sent.model_id} worker exited")
            orphaned = not ring.taken and not ring.cancelled
            self._send(WorkerGone(sent.call, error.status, error.json(), orphaned))
            return
        self._watch(sent.call, self._state.dispatch.adopt(lease, sent.request_id, ring, sent.uses))

    def _watch(self, call: int, dispatched: Dispatched) -> None:
        """Tell the HTTP process if the worker dies before the answer is whole."""

        def finished(future: asyncio.Future[Gone | None]) -> None:
            gone = future.result()
            if gone is not None:
                error = gone.error
                self._send(WorkerGone(call, error.status, error.json(), gone.orphaned))

        dispatched.finished.add_done_callback(finished)

    async def _forward(self, request: Forward) -> None:
        status, headers, body = await serve_forwarded(self._app, request)
        self._send(Answer(request.call, status, headers, body))

    def _send_event(self, line: bytes) -> None:
        self._send(ModelEvent(line))

    def _send_upstreams(self) -> None:
        self._send(UpstreamRoutes(self._state.supervisor.upstream_routes()))

    def _send_direct_routes(self, routes: dict[str, DirectRoute]) -> None:
        self._send(DirectRoutes(routes))

    def _send(self, reply: Reply) -> None:
        self._outbox.put(self._codec.encode(reply))

    def close(self) -> None:
        """The HTTP process is gone: whatever it waited for is dropped."""
        if self._conn.closed:
            return
        self._untap()
        self._stop_reading_catalog()
        self._stop_reading_routes()
        self._loop.remove_reader(self._conn.fileno())
        self._outbox.close()
        self._conn.close()
        for task in list(self._tasks.values()):
            task.cancel()


class Outbox:
    """Messages to an HTTP process go out on a thread of their own, so that a process that
    stops reading (stuck in a handler, or stopped) never blocks the supervisor's loop. One that
    falls `limit` bytes behind is given up on (`on_stuck`: it is killed and replaced).

    A small message with nothing before it is written at once when the pipe has room: waking
    the thread (and handing it the GIL) would delay the `Admitted` a relayed request waits for,
    and take a core from its model while it decodes."""

    def __init__(
        self, conn: Connection, on_stuck: Callable[[], None], limit: int = OUTBOX_BYTES
    ) -> None:
        self._conn = conn
        self._on_stuck = on_stuck
        self._limit = limit
        self._waiting: deque[bytes] = deque()
        self._size = 0  # bytes queued or being written by the thread
        self._closed = False
        self._ready = threading.Condition()
        self._room = select.poll()
        self._room.register(conn.fileno(), select.POLLOUT)
        threading.Thread(target=self._write, name="control-outbox", daemon=True).start()

    def put(self, message: bytes) -> None:
        with self._ready:
            if self._closed:
                return
            if not self._size and self._writes_at_once(message):
                return
            stuck = self._size + len(message) > self._limit
            if not stuck:
                self._waiting.append(message)
                self._size += len(message)
                self._ready.notify()
        if stuck:
            log.error("an HTTP process has not read %d bytes of replies: ending it", self._size)
            self.close()
            self._on_stuck()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                message = self._waiting.popleft()
            try:
                self._conn.send_bytes(message)
            except OSError:  # the process is gone; its reader sees the end
                return
            with self._ready:
                self._size -= len(message)

    def _writes_at_once(self, message: bytes) -> bool:
        """Write `message` here if that cannot block; called with nothing queued or being
        written, under the lock, so that it cannot pass a message or cut into one."""
        if len(message) > AT_ONCE_BYTES or not self._room.poll(0):
            return False
        with contextlib.suppress(OSError):  # the process is gone; its reader sees the end
            self._conn.send_bytes(message)
        return True

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._waiting.clear()
            self._ready.notify()


async def serve_forwarded(
    app: Starlette, request: Forward
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run a forwarded request through the app's routes, as if it had come in here; the
    HTTP process that took it has already checked its key and will add its CORS headers."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": None,
        "server": None,
        "app": app,
        "state": {},
        "starlette.exception_handlers": (app.exception_handlers, {}),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Event().wait()  # the client's connection is the other process's
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    parts: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app.router(scope, receive, send)
    return status, headers, b"".join(parts)
