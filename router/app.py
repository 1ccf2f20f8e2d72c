"""Starlette app factory: the routes table, error handlers, and start-up / shut-down order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from router.config import RouterConfig
from router.middleware import PUBLIC, ApiKeys, LlamaServerCors, RequestTimer
from router.openapi import build_document
from router.routes import downloads, inference, metrics, models, ops, slots, streams, web
from router.routes.ops import build_info
from router.state import RouterState, build_state
from workers.errors import ApiError
from workers.ring import sweep_stale_segments

log = logging.getLogger("llama-router")

def create_app(config: RouterConfig) -> Starlette:
    state = build_state(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stale = sweep_stale_segments()
        if stale:
            log.info("removed %d stale shared-memory segments of a dead router", len(stale))
        state.loop = asyncio.get_running_loop()
        state.supervisor.start()
        state.streams.start_gc()
        try:
            yield
        finally:
            await shutdown(state)

    public = PUBLIC | ({("GET", "/metrics")} if config.metrics_public else set())
    middleware = [Middleware(RequestTimer, metrics=state.metrics)]
    if config.cors_origins:
        middleware.append(
            Middleware(
                LlamaServerCors,
                origins=config.cors_origins,
                methods=config.cors_methods,
                headers=config.cors_headers,
                credentials=config.cors_credentials,
            )
        )
    if config.api_keys:
        middleware.append(Middleware(ApiKeys, keys=config.api_keys, public=public))
    app = Starlette(
        middleware=middleware,
        routes=[
            *ops.routes,
            *metrics.routes,
            *slots.routes,
            *models.routes,
            *downloads.routes,
            *inference.routes,
            *streams.routes,
            *web.routes,
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.router = state
    api_routes = [route for route in app.routes if route not in web.routes]
    document = build_document(api_routes, bool(config.api_keys), build_info(), public)
    app.state.openapi = msgspec.json.encode(document)
    return app


async def shutdown(state: RouterState) -> None:
    """End every stream and session, stop every worker, and remove every ring."""
    state.stop_generations()
    await state.relay.drain()
    await state.supervisor.shutdown()
    await state.relay.drain()
    await state.streams.close()
    state.relay.close_rings()
    state.events.close()


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
