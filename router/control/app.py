"""The main process's app: every route, the supervisor beside them, and the other HTTP
processes it starts, in start-up and shut-down order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection

from starlette.applications import Starlette

from router.config import RouterConfig
from router.control.http_processes import HttpProcesses
from router.control.port import ControlPort, LocalControl
from router.control.state import RouterState, build_state
from router.http.app import all_routes, build_app, drain, remote_sessions
from router.http.exchanges import Exchanges, RingWatch
from router.http.state import HttpState
from router.metrics import remove_shared_dir, sweep_stale_shared_dirs
from workers.ring import sweep_stale_segments

log = logging.getLogger("llama-router")


def create_app(config: RouterConfig, sockets: list[socket.socket] | None = None) -> Starlette:
    """The main process's app: the supervisor, and the HTTP processes beside it."""
    state = build_state(config)
    http = HttpState(
        config,
        state.events,
        Exchanges(RingWatch(os.getpid(), 0), config.response_buffer_bytes),
        state.streams.index,
        LocalControl(state),
        state.metrics,
        state.upstream_client,
        remote_sessions(config),
    )
    app: Starlette

    def serve_process(conn: Connection, on_stuck: Callable[[], None]) -> ControlPort:
        return ControlPort(state, app, conn, on_stuck)

    processes = HttpProcesses(
        config, sockets or [], serve_process, on_gone=state.forget_http_process
    )
    state.http_processes = processes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stale = sweep_stale_segments()
        if stale:
            log.info("removed %d stale shared-memory segments of a dead router", len(stale))
        sweep_stale_shared_dirs()
        state.loop = asyncio.get_running_loop()
        http.exchanges.watch.start()
        state.supervisor.start()
        state.streams.start_gc()
        state.upstreams.start()
        if state.streams.mirror is not None:
            state.streams.mirror.start(http.exchanges.watch, state.streams.delete)
        processes.start()
        try:
            yield
        finally:
            await shutdown(state, http, processes)

    app = build_app(config, http, all_routes(), lifespan)
    app.state.router = state
    return app


async def shutdown(state: RouterState, http: HttpState, processes: HttpProcesses) -> None:
    """End every stream and session, stop every process, and remove every ring."""
    state.stop_generations()
    http.stop()
    await processes.stop()
    await drain(http)
    await state.supervisor.shutdown()
    await state.dispatch.drain()
    await state.streams.close()
    await state.upstreams.stop()
    await state.upstream_client.close()
    remove_shared_dir()
