"""Inference routes: validate, find the model, wait for it, and relay the worker's answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.responses import RingResponse, SessionResponse
from router.routes.common import query_flag, read_body, router_state
from router.state import find_model
from router.supervisor import Lease
from workers.errors import ApiError
from workers.schema import BODY_TYPES, decode_body

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its answer began."""


async def infer(request: Request) -> Any:
    route = request.url.path
    body = await read_body(request)
    name: str | None = decode_body(body, BODY_TYPES[route]).model
    if not name:
        raise ApiError(400, "model name is missing from the request")
    state = router_state(request)
    model = find_model(state, name)
    if model is None:
        raise ApiError(400, f"model '{name}' not found")
    autoload = query_flag(request, "autoload", state.config.models_autoload)
    conversation_id = request.headers.get("x-conversation-id")
    if conversation_id:  # an empty id asks for no session, as in llama-server
        session = state.streams.start(conversation_id, model, route, body, autoload)
        return SessionResponse(session, 0, original=True)
    try:
        waiting = asyncio.wait_for(state.supervisor.acquire(model, autoload), state.config.timeout)
        lease = await until_disconnect(request, waiting)
    except ClientGone:
        return Response(status_code=499)
    except TimeoutError as error:
        message = f"model {model.id} was not available within {state.config.timeout:g} s"
        raise ApiError(503, message) from error
    return _relay(state.relay, lease, route, body, state.config.timeout)


def _relay(relay: Any, lease: Lease, route: str, body: bytes, timeout: float) -> RingResponse:
    try:
        exchange = relay.send(lease, route, body)
    except BaseException:
        relay.release_lease(lease)
        raise
    return RingResponse(exchange, relay.close, timeout)


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, abandoning it (and raising ClientGone) if the client disconnects."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


routes = [Route(path, infer, methods=["POST"]) for path in BODY_TYPES]
