"""Starlette app factory: the routes table, error handlers, and start-up / shut-down order."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from router.catalog import FoundFiles, build_catalog, bundled_default
from router.config import RouterConfig
from router.presets import Presets, load_presets
from router.relay import Relay
from router.routes import inference, models, ops
from router.supervisor import Supervisor
from workers.errors import ApiError
from workers.ring import sweep_stale_segments

log = logging.getLogger("llama-router")


@dataclass
class RouterState:
    config: RouterConfig
    presets: Presets
    bundled: FoundFiles | None
    supervisor: Supervisor
    relay: Relay


def build_state(config: RouterConfig) -> RouterState:
    presets = load_presets(config.models_preset)
    bundled = None
    if not config.models_dir and not config.models_preset:
        bundled = bundled_default(config.cache_dir)
    specs = build_catalog(config, presets, bundled)
    relay = Relay(config.response_buffer_bytes, release=lambda lease: supervisor.release(lease))
    supervisor = Supervisor(config, specs, on_wrote=relay.wake, on_worker_gone=relay.worker_gone)
    return RouterState(config, presets, bundled, supervisor, relay)


def create_app(config: RouterConfig) -> Starlette:
    state = build_state(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stale = sweep_stale_segments()
        if stale:
            log.info("removed %d stale shared-memory segments of a dead router", len(stale))
        state.supervisor.start()
        try:
            yield
        finally:
            await shutdown(state)

    app = Starlette(
        routes=[*ops.routes, *models.routes, *inference.routes],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.router = state
    return app


async def shutdown(state: RouterState) -> None:
    """End every stream, stop every worker, and remove every ring."""
    await state.relay.drain()
    await state.supervisor.shutdown()
    await state.relay.drain()


def error_response(error: ApiError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "File Not Found" if exc.status_code == 404 else str(exc.detail)
    return error_response(ApiError(exc.status_code, message))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}"))
