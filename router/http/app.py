"""An HTTP process's Starlette app: the routes table, middleware and error handlers every
HTTP process shares, and the app of the processes beside the main one, where the routes
that read or change the model table are forwarded to the main process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from router.config import RouterConfig
from router.events import EventHub
from router.http.control_client import RemoteControl
from router.http.exchanges import Exchanges, RingWatch
from router.http.middleware import PUBLIC, ApiKeys, LlamaServerCors, RequestTimer
from router.http.openapi import build_document
from router.http.remote_sessions import RemoteSessions
from router.http.routes import downloads, inference, metrics, models, ops, slots, streams, web
from router.http.routes.common import http_state, read_body
from router.http.routes.ops import build_info
from router.http.state import HttpState
from router.metrics import SHARED_DIR_ENV, RouterMetrics
from router.upstream import UpstreamClient
from workers.errors import ApiError
from workers.session_index import SessionIndex, index_name

log = logging.getLogger("llama-router")

# Served by whichever HTTP process takes the request; every other route runs in the main one.
EVERY_PROCESS = {
    inference.infer,
    streams.follow_stream,
    ops.health,
    ops.openapi,
    models.model_events,
    web.web_page,
}
# A stuck worker must not hold a stopping HTTP process forever.
DRAIN_SECONDS = 5.0


def all_routes() -> list[BaseRoute]:
    return [
        *ops.routes,
        *metrics.routes,
        *slots.routes,
        *models.routes,
        *downloads.routes,
        *inference.routes,
        *streams.routes,
        *web.routes,
    ]


def create_http_app(config: RouterConfig, conn: Connection, process: int) -> Starlette:
    """Another HTTP process's app; `process` is its number (the main one is 0)."""
    router_pid = os.getppid()
    events = EventHub()
    metrics = RouterMetrics(os.environ.get(SHARED_DIR_ENV))
    watch = RingWatch(router_pid, process)
    sessions = SessionIndex.attach(index_name(router_pid))
    app: Starlette

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watch.start()
        http.control = RemoteControl(conn, events, metrics)
        try:
            yield
        finally:
            http.stop()
            await drain(http)
            sessions.close()

    http = HttpState(
        config,
        events,
        Exchanges(watch, config.response_buffer_bytes),
        sessions,
        _NoControl(),
        metrics,
        UpstreamClient(config.timeout),
        remote_sessions(config),
    )
    routes = [_forwarded(route) for route in all_routes()]
    app = build_app(config, http, routes, lifespan)
    return app


def remote_sessions(config: RouterConfig) -> RemoteSessions | None:
    return RemoteSessions(config.sessions_redis) if config.sessions_redis else None


async def drain(http: HttpState) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(http.close(), DRAIN_SECONDS)


class _NoControl:
    """Before the lifespan starts, no route runs."""

    admits_at_once = True  # it answers at once, with a refusal

    async def admit(self, *args: Any) -> Any:
        raise ApiError(503, "the router is starting")

    async def start_session(self, *args: Any) -> Any:
        raise ApiError(503, "the router is starting")

    def upstream(self, name: str) -> None:
        return None


def _forwarded(route: BaseRoute) -> BaseRoute:
    if not isinstance(route, Route) or route.endpoint in EVERY_PROCESS:
        return route
    return Route(route.path, forward, methods=route.methods)


async def forward(request: Request) -> Response:
    """A route of the main process, asked from here."""
    http = http_state(request)
    assert isinstance(http.control, RemoteControl)
    body = await read_body(request)
    answer = await http.control.forward(
        request.method, request.url.path, request.scope["query_string"], request.headers.raw, body
    )
    response = Response(status_code=answer.status)
    response.raw_headers = answer.headers
    response.body = answer.body
    return response


def build_app(
    config: RouterConfig,
    http: HttpState,
    routes: list[BaseRoute],
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]],
) -> Starlette:
    public = PUBLIC | ({("GET", "/metrics")} if config.metrics_public else set())
    middleware = [Middleware(RequestTimer, metrics=http.metrics)]
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
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.http = http
    api_routes = [route for route in app.routes if route not in web.routes]
    document = build_document(api_routes, bool(config.api_keys), build_info(), public)
    app.state.openapi = msgspec.json.encode(document)
    return app


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
