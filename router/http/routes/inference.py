"""Inference routes: validate, have the supervisor admit the request to its model, and relay
the worker's answer from the ring."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.http.exchanges import Exchange
from router.http.responses import RingResponse, SessionResponse, unless
from router.http.routes.common import http_state, query_flag, read_body
from router.http.upstream_proxy import UpstreamResponse
from router.messages import CLIENT_LEFT, Admission
from router.metrics import RequestClock
from workers.errors import ApiError
from workers.ring import Ring
from workers.schema import BODY_TYPES, decode_body

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its answer began."""


async def infer(request: Request) -> Any:
    route = request.url.path
    body = await read_body(request)
    arrived_ns = time.monotonic_ns()  # the client's upload is not the router's cost
    name: str | None = decode_body(body, BODY_TYPES[route]).model
    http = http_state(request)
    config = http.config
    autoload = query_flag(request, "autoload", config.models_autoload)
    conversation_id = request.headers.get("x-conversation-id")
    upstream = http.control.upstream(name) if name else None
    if upstream is not None and not conversation_id:
        clock = RequestClock(http.metrics, upstream.model_id, arrived_ns)
        return UpstreamResponse(http.upstream_client, upstream, route, body, clock)
    if conversation_id:  # an empty id asks for no session, as in llama-server
        admission = Admission(route, name, body, autoload, config.timeout, conversation_id)
        ticket = await http.control.start_session(admission)
        clock = RequestClock(http.metrics, ticket.model_id, arrived_ns)
        clock.sent(ticket.waited, time.monotonic_ns())
        try:
            ring = Ring.attach(ticket.ring)
        except FileNotFoundError:
            raise ApiError(404, "Stream not found or expired") from None
        return SessionResponse(http.exchanges.watch, ring, 0, clock)
    deadline = time.monotonic() + config.timeout

    async def admitted() -> Exchange:
        """The request on its way to its model's worker (in the main process, in it); waits
        (a resend's included) end at --timeout."""
        left = max(0.0, deadline - time.monotonic())
        exchange = http.exchanges.open()
        try:
            await http.control.admit(Admission(route, name, body, autoload, left), exchange)
        except BaseException:
            http.exchanges.close(exchange)
            raise
        return exchange

    if http.control.admits_at_once:
        # Watching for the client to leave costs two tasks and a turn of the loop before the
        # request goes out, and there is no wait here for it to cut short
        exchange = await admitted()
    else:
        try:
            exchange = await until_disconnect(request, admitted())
        except ClientGone:
            return Response(status_code=CLIENT_LEFT)
    clock = RequestClock(http.metrics, exchange.model_id or name or "", arrived_ns)
    return RingResponse(exchange, http.exchanges.close, config.timeout, admitted, clock)


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, abandoning it (and raising ClientGone) if the client disconnects."""
    result = await unless(awaitable, _disconnected(request))
    if result is None:
        raise ClientGone
    return result


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


routes = [Route(path, infer, methods=["POST"]) for path in BODY_TYPES]
