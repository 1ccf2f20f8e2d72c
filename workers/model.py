"""Model worker: one process, one model. Loads it, then serves requests that arrive on its pipe.

Responses never travel back on the pipe: the worker writes the exact response bytes into the
request's shared-memory ring and only sends a small `Wrote` note so readers wake up.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import parent_process
from multiprocessing.connection import Connection, wait
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING

from workers.errors import ApiError
from workers.protocol import (
    EXIT_LOAD_FAILED,
    Command,
    CommandCodec,
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
    Wake,
    Woke,
    Wrote,
)
from workers.ring import AttachedRings, Cancelled, Media, Ring, RingState

if TYPE_CHECKING:
    from workers.engines.llama_cpp import LlamaEngine

_PROGRESS_INTERVAL = 0.05
HEARTBEAT_SECONDS = 1.0


def run(conn: Connection, heartbeat: Synchronized[float]) -> None:
    """Process entry point (multiprocessing target). The router starts workers ahead of need:
    this one pays for its imports now and learns which model it serves from a Load command.
    Unloaded with `recycle`, it frees the model and waits for the next Load instead of exiting,
    so that swapping models costs no process start."""
    os.setpgrp()  # one group per worker, so the router can signal the worker and its children
    _exit_with_parent()
    commands, events = CommandCodec(), EventCodec()
    import workers.engines.llama_cpp  # noqa: F401  (the slow import, done before it is needed)

    def send(event: Event) -> None:
        conn.send_bytes(events.encode(event))

    rings = AttachedRings()
    beat = Heartbeat(heartbeat)
    while isinstance(command := _receive(conn, commands), Load):
        engine = _load(command.settings, send, beat)
        beat()
        send(Ready(engine.info()))
        if not _serve(engine, rings, conn, commands, send, beat):
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


def _serve(
    engine: LlamaEngine,
    rings: AttachedRings,
    conn: Connection,
    commands: CommandCodec,
    send: Callable[[Event], None],
    beat: Heartbeat,
) -> bool:
    """Serve one model until told to stop; True when the process should wait for another."""
    while True:
        while not conn.poll(HEARTBEAT_SECONDS):
            beat()
        beat()
        match _receive(conn, commands):
            case Infer() as request:
                serve(engine, rings, request, send, beat)
            case Sleep():
                engine.sleep()
                send(Slept())
            case Wake():
                engine.wake()
                send(Woke())
            case Exit(recycle=recycle):
                return recycle
            case _:
                return False


def _load(settings: ModelSettings, send: Callable[[Event], None], beat: Heartbeat) -> LlamaEngine:
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
        engine = LlamaEngine(settings, report)
    except Exception as error:
        send(LoadFailed(f"failed to load model '{settings.model_id}': {error}"))
        sys.exit(EXIT_LOAD_FAILED)
    first_load = False
    return engine


class Heartbeat:
    """The last sign of life, in memory the router reads: refreshed while idle, and on every
    cancel check, which the token loop makes per token and llama.cpp between graph nodes."""

    def __init__(self, value: Synchronized[float]) -> None:
        self._value = value

    def __call__(self) -> None:
        self._value.value = time.monotonic()


def serve(
    engine: LlamaEngine,
    rings: AttachedRings,
    request: Infer,
    send: Callable[[Event], None],
    beat: Heartbeat,
) -> None:
    try:
        ring = rings.get(request.ring) if request.pooled else Ring.attach(request.ring)
    except FileNotFoundError:
        return  # the ring is gone: the router stopped caring about this request
    started = False
    ring.take()
    try:
        if ring.cancelled:
            return

        def cancelled() -> bool:
            beat()
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
            send(Wrote(request.request_id))
    except Cancelled:
        pass
    except ApiError as error:
        _write_error(ring, error, started)
    except Exception as error:  # a bug or an engine failure must not kill the worker
        _write_error(ring, ApiError(500, f"{type(error).__name__}: {error}"), started)
    finally:
        ring.finish(RingState.DONE)
        send(Wrote(request.request_id))
        if not request.pooled:
            ring.close()


def with_event_id(event: bytes, start: int) -> bytes:
    """Prefix `id: N` where N is the ring offset just past this very event."""
    digits = len(str(start + len(event)))
    while True:
        end = start + len(event) + len(b"id: \n") + digits
        if len(str(end)) == digits:
            return b"id: %d\n" % end + event
        digits = len(str(end))


def _write_error(ring: Ring, error: ApiError, started: bool) -> None:
    if started:
        ring.write(error.sse())
    else:
        ring.begin(error.status, Media.JSON)
        ring.write(error.json())


def _exit_with_parent() -> None:
    """Die with the router, even when it was SIGKILLed and could not tell us."""
    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
