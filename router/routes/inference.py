"""Inference routes: validate, find the model, wait for it, and relay the worker's answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.metrics import RequestClock
from router.relay import Exchange, Relay
from router.responses import RingResponse, SessionResponse, unless
from router.routes.common import query_flag, read_body, router_state
from router.state import RouterState, model_for_request, with_files
from router.supervisor import Lease, Model
from workers.errors import ApiError
from workers.schema import BODY_TYPES, decode_body

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its answer began."""


async def infer(request: Request) -> Any:
    route = request.url.path
    body = await read_body(request)
    arrived_ns = time.monotonic_ns()  # the client's upload is not the router's cost
    name: str | None = decode_body(body, BODY_TYPES[route]).model
    state = router_state(request)
    model = model_for_request(state, name)
    if model is None and not name:
        raise ApiError(400, "model name is missing from the request")
    if model is None:
        raise ApiError(400, f"model '{name}' not found")
    autoload = query_flag(request, "autoload", state.config.models_autoload)
    if autoload:
        model = await with_files(state, model)
    clock = RequestClock(state.metrics, model.id, arrived_ns)
    conversation_id = request.headers.get("x-conversation-id")
    if conversation_id:  # an empty id asks for no session, as in llama-server
        session = state.streams.start(conversation_id, model, route, body, autoload, clock)
        return SessionResponse(session, 0, original=True)
    deadline = time.monotonic() + state.config.timeout
    try:
        lease = await until_disconnect(request, _acquire(state, model, autoload, deadline))
    except ClientGone:
        return Response(status_code=499)

    async def resend() -> Exchange:
        return _send(state.relay, await _acquire(state, model, autoload, deadline), route, body)

    exchange = _send(state.relay, lease, route, body)
    clock.sent(lease.waited)
    return RingResponse(exchange, state.relay.close, state.config.timeout, resend, clock)


async def _acquire(state: RouterState, model: Model, autoload: bool, deadline: float) -> Lease:
    """The model, loaded and leased; waits (a resend's included) end at --timeout with a 503."""
    try:
        left = max(0.0, deadline - time.monotonic())
        return await asyncio.wait_for(state.supervisor.acquire(model, autoload), left)
    except TimeoutError as error:
        message = f"model {model.id} was not available within {state.config.timeout:g} s"
        raise ApiError(503, message) from error


def _send(relay: Relay, lease: Lease, route: str, body: bytes) -> Exchange:
    try:
        return relay.send(lease, route, body)
    except BaseException:
        relay.release_lease(lease)
        raise


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
