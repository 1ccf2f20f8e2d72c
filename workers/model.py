"""Model worker: one process, one model. Loads it, then serves requests that arrive on its pipe
or, from HTTP processes other than the main one, on its direct socket (workers/direct.py).

Up to one request per slot runs at once, each in its own thread; the engine's decoder thread
advances all their generations together. Commands other than requests wait until every request
before them is done, as they would on a worker that served one request at a time.

Responses never travel back on the pipe: the worker writes the exact response bytes into the
request's shared-memory ring and sends a small note (workers/notes.py) straight to the HTTP
processes that follow the ring, at most one per request every few milliseconds. The pipe only
hears that a request `Ended`, for the supervisor to count the model free again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING

from workers.cores import WorkerCores
from workers.direct import DirectInbox
from workers.engine_counters import EngineCounters, Figure
from workers.errors import ApiError
from workers.notes import NoteSender
from workers.parent import exit_with_parent
from workers.protocol import (
    EXIT_LOAD_FAILED,
    Command,
    CommandCodec,
    Ended,
    Event,
    EventCodec,
    Exit,
    Infer,
    Load,
    LoadFailed,
    Loading,
    ModelSettings,
    Ready,
    Released,
    Sleep,
    Slept,
    SlotAction,
    SlotAnswer,
    Wake,
    Woke,
)
from workers.ring import (
    AttachedRings,
    Cancelled,
    Media,
    Ring,
    RingState,
    with_event_id,
    write_error,
)

if TYPE_CHECKING:
    from workers.engines.llama_cpp import LlamaEngine

_PROGRESS_INTERVAL = 0.05
HEARTBEAT_SECONDS = 1.0
# How late a reader may learn of bytes already in its ring: one note covers the tokens of this
# long, so the router wakes, reads and sends once for several of them.
NOTE_SECONDS = 0.004


def run(
    conn: Connection,
    heartbeat: Synchronized[float],
    cores: ctypes.Array[ctypes.c_int],
    cell: int,
    figures: ctypes.Array[ctypes.c_double],
) -> None:
    """Process entry point (multiprocessing target). The router starts workers ahead of need:
    this one pays for its imports now and learns which model it serves from a Load command.
    Unloaded with `recycle`, it frees the model and waits for the next Load instead of exiting,
    so that swapping models costs no process start. `cores` is the CPU budget table shared by
    every worker, `cell` this worker's place in it (workers/cores.py); `figures` its engine
    counters (workers/engine_counters.py)."""
    os.setpgrp()  # one group per worker, so the router can signal the worker and its children
    exit_with_parent()
    commands, events = CommandCodec(), EventCodec()
    import workers.engines.llama_cpp  # noqa: F401  (the slow import, done before it is needed)

    sending = threading.Lock()

    def send(event: Event) -> None:
        with sending:  # request threads and the main thread share the pipe
            conn.send_bytes(events.encode(event))

    rings = AttachedRings()
    beat = Heartbeat(heartbeat)
    share = WorkerCores(cores, cell)
    counters = EngineCounters(figures)
    while isinstance(command := _receive(conn, commands), Load):
        engine = _load(command.settings, send, beat, share, counters)
        beat()
        if not _serve(engine, rings, conn, commands, send, beat):
            engine.keep_slots()
            break  # the process ends: the OS frees the model faster than a collection does
        engine.sleep()
        send(Released())
    conn.close()
    os._exit(0)  # nothing to tear down: rings belong to the router, the OS frees the model


def _receive(conn: Connection, commands: CommandCodec) -> Command | None:
    try:
        return commands.decode(conn.recv_bytes())
    except (EOFError, OSError):
        return None


class _Wakeup:
    """Wakes the main thread from its wait: a request ended, or a note is held back."""

    def __init__(self) -> None:
        self.fileno, self._signal = os.pipe()

    def __call__(self) -> None:
        os.write(self._signal, b".")

    def clear(self) -> None:
        os.read(self.fileno, 4096)

    def close(self) -> None:
        os.close(self.fileno)
        os.close(self._signal)


class _Requests:
    """The requests this worker runs, one thread each, and those waiting for a slot."""

    def __init__(
        self, engine: LlamaEngine, rings: AttachedRings, notes: Notes, wakeup: _Wakeup
    ) -> None:
        self.waiting: deque[Infer] = deque()
        self.running: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._engine, self._rings, self._notes, self._wakeup = engine, rings, notes, wakeup

    def start_waiting(self, slots: int) -> None:
        with self._lock:
            while self.waiting and len(self.running) < slots:
                request = self.waiting.popleft()
                thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
                self.running.add(thread)
                thread.start()

    def _serve(self, request: Infer) -> None:
        try:
            serve(self._engine, self._rings, request, self._notes)
        finally:
            # Off the set before the wake-up: a thread that is still alive when the main thread
            # looks would hold back the next request or command until the next heartbeat.
            with self._lock:
                self.running.discard(threading.current_thread())
            self._wakeup()


def _serve(
    engine: LlamaEngine,
    rings: AttachedRings,
    conn: Connection,
    commands: CommandCodec,
    send: Callable[[Event], None],
    beat: Heartbeat,
) -> bool:
    """Serve one model until told to stop; True when the process should wait for another."""
    wakeup = _Wakeup()
    notes = Notes(send, wakeup, NoteSender(os.getppid()))
    requests = _Requests(engine, rings, notes, wakeup)
    control: Command | None = None  # waits for the requests that came before it
    inbox = DirectInbox()
    send(Ready(engine.info(), inbox.address))
    direct: DirectInbox | None = inbox  # None while asleep or stopping

    def refuse(request: Infer) -> None:
        try:
            ring: Ring | None = rings.get(request.ring)
        except FileNotFoundError:
            ring = None  # its HTTP process is gone
        if ring is not None:
            ring.finish(RingState.REFUSED)
        with contextlib.suppress(OSError):  # the router is gone: nobody counts it
            notes.done(request.request_id, ring)

    try:
        while True:
            requests.start_waiting(engine.slots)
            engine.counters.set(Figure.DEFERRED, len(requests.waiting))
            if control is not None and not requests.waiting and not requests.running:
                match control:
                    case Sleep():
                        engine.sleep()
                        send(Slept())
                    case Wake():
                        engine.wake()
                        direct = DirectInbox()
                        send(Woke(direct.address))
                    case Exit(recycle=recycle):
                        return recycle
                    case _:
                        return False
                control = None
            listening: list[Connection | socket.socket | int] = [wakeup.fileno]
            if control is None:
                listening.append(conn)
            if direct is not None:
                listening.append(direct.socket)
            ready = wait(listening, NOTE_SECONDS if notes.held else HEARTBEAT_SECONDS)
            if wakeup.fileno in ready:
                wakeup.clear()
            if conn in ready:
                match _receive(conn, commands):
                    case Infer() as request:
                        requests.waiting.append(request)
                    case SlotAction() as action:
                        _answer_in_background(engine, action, send)
                    case None:
                        control = Exit(recycle=False)  # the router is gone
                    case command:
                        control = command
                if control is not None and direct is not None:
                    # The supervisor's word comes first: what waits beside it goes the long way.
                    closing, direct = direct, None
                    closing.close(refuse)
            if direct is not None and direct.socket in ready:
                requests.waiting.extend(direct.receive())
            notes.flush()
            if not requests.running:
                beat()  # the decoder beats while requests run: a stuck decode stays silent
    finally:
        if direct is not None:
            direct.close(refuse)
        notes.close()
        wakeup.close()


def _answer_in_background(
    engine: LlamaEngine, action: SlotAction, send: Callable[[Event], None]
) -> None:
    """A slot action waits for its slot to be free: it must not hold up the commands."""

    def answer() -> None:
        try:
            result = engine.slot_action(action.action, action.slot, action.path)
            status, body = 200, json.dumps(result).encode()
        except ApiError as error:
            status, body = error.status, error.json()
        except Exception as error:  # a bug or an engine failure must not kill the worker
            failure = ApiError(500, f"{type(error).__name__}: {error}")
            status, body = failure.status, failure.json()
        send(SlotAnswer(action.query, status, body))

    threading.Thread(target=answer, name="slot-action", daemon=True).start()


def _load(
    settings: ModelSettings,
    send: Callable[[Event], None],
    beat: Heartbeat,
    cores: WorkerCores,
    counters: EngineCounters,
) -> LlamaEngine:
    beat()  # a spare has waited for this without a word
    send(Loading(0.0))
    from workers.engines.llama_cpp import LlamaEngine

    last = 0.0
    first_load = True

    def report(value: float) -> None:
        """Load progress. A wake reloads through the same hook: then it only beats, since
        the model is already reported loaded."""
        nonlocal last
        beat()
        now = time.monotonic()
        if first_load and (value >= 1.0 or now - last >= _PROGRESS_INTERVAL):
            last = now
            send(Loading(value))

    try:
        engine = LlamaEngine(settings, report, cores, beat, counters)
    except Exception as error:
        send(LoadFailed(f"failed to load model '{settings.model_id}': {error}"))
        sys.exit(EXIT_LOAD_FAILED)
    first_load = False
    return engine


class Heartbeat:
    """The last sign of life, in memory the router reads: refreshed while idle, after every
    decode, and by llama.cpp between graph nodes of a long prompt's decode."""

    def __init__(self, value: Synchronized[float]) -> None:
        self._value = value

    def __call__(self) -> None:
        self._value.value = time.monotonic()


class Notes:
    """Wake-up notes to a ring's readers: at once for a request's first bytes and its end,
    otherwise at most one per request every NOTE_SECONDS; the main thread sends those held
    back. The end is also told to the supervisor, over the pipe."""

    def __init__(
        self, send: Callable[[Event], None], wakeup: Callable[[], None], sender: NoteSender
    ) -> None:
        self._send = send
        self._wakeup = wakeup
        self._sender = sender
        self._lock = threading.Lock()
        self._sent: dict[int, float] = {}
        self.held: dict[int, Ring] = {}

    def wrote(self, request_id: int, ring: Ring) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._sent.get(request_id, 0.0) < NOTE_SECONDS:
                first_held = not self.held
                self.held[request_id] = ring
                if first_held:
                    self._wakeup()  # the main thread may be in a long wait
                return
            self._sent[request_id] = now
            self.held.pop(request_id, None)
        self._notify(ring)

    def done(self, request_id: int, ring: Ring | None) -> None:
        with self._lock:
            self._sent.pop(request_id, None)
            self.held.pop(request_id, None)
        if ring is not None:
            self._notify(ring)
        self._send(Ended(request_id))

    def flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [
                (request_id, ring)
                for request_id, ring in self.held.items()
                if now - self._sent.get(request_id, 0.0) >= NOTE_SECONDS
            ]
            for request_id, _ in due:
                self._sent[request_id] = now
                del self.held[request_id]
        for _, ring in due:
            self._notify(ring)

    def _notify(self, ring: Ring) -> None:
        self._sender.send(ring.reader_processes(), ring.key)

    def close(self) -> None:
        self._sender.close()


def serve(engine: LlamaEngine, rings: AttachedRings, request: Infer, notes: Notes) -> None:
    try:
        ring = rings.get(request.ring) if request.pooled else Ring.attach(request.ring)
    except FileNotFoundError:
        notes.done(request.request_id, None)  # the ring is gone: nobody waits for the answer
        return
    started = False
    ring.take()
    try:
        if ring.cancelled:
            return

        def cancelled() -> bool:
            return ring.cancelled

        response = engine.handle(request.route, request.body, cancelled)
        if response.events is None:
            assert response.body is not None
            ring.begin(response.status, Media.JSON)
            ring.write(response.body)
            return
        for event in response.events:
            if not started:
                ring.begin(200, Media.EVENT_STREAM)
                started = True
            ring.write(with_event_id(event, ring.write_pos) if request.event_ids else event)
            notes.wrote(request.request_id, ring)
    except Cancelled:
        pass
    except ApiError as error:
        write_error(ring, error, started)
    except Exception as error:  # a bug or an engine failure must not kill the worker
        write_error(ring, ApiError(500, f"{type(error).__name__}: {error}"), started)
    finally:
        ring.finish(RingState.DONE)
        notes.done(request.request_id, ring)
        if not request.pooled:
            ring.close()
