"""Resumable streams: replay and follow, stop, and look sessions up."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.control.sessions import check_conversation_id
from router.http.remote_sessions import RemoteSessionResponse
from router.http.responses import SessionResponse
from router.http.routes.common import http_state, json_response, read_body, router_state
from workers.errors import ApiError
from workers.ring import Ring
from workers.schema import decode_body
from workers.session_index import SessionState


class LookupRequest(msgspec.Struct):
    conversation_ids: list[str]


def _offset(request: Request) -> int:
    raw = request.query_params.get("from") or request.headers.get("last-event-id") or "0"
    if not raw.isdigit():
        raise ApiError(400, "Invalid 'from' offset")
    return int(raw)


async def follow_stream(request: Request) -> SessionResponse | RemoteSessionResponse:
    """Served by whichever HTTP process took the request: the session is found in the shared
    index and read from its ring; else, with --sessions-redis, in another replica's copy."""
    conversation_id = check_conversation_id(request.query_params.get("conv_id", ""))
    offset = _offset(request)
    http = http_state(request)
    entry = http.sessions.find(conversation_id)
    if entry is None:
        if http.remote is not None:
            return await http.remote.follow(conversation_id, offset)
        raise ApiError(404, "Stream not found or expired")
    if entry.state is SessionState.PENDING:
        raise ApiError(503, "the model of this stream is still loading, retry later")
    try:
        ring = Ring.attach(entry.ring)
    except FileNotFoundError:
        raise ApiError(404, "Stream not found or expired") from None
    if offset < ring.start_pos or offset > ring.write_pos:
        lost = offset < ring.start_pos
        ring.close()
        raise ApiError(
            400, "Stream offset lost, please restart" if lost else "Invalid 'from' offset"
        )
    return SessionResponse(http.exchanges.watch, ring, offset)


async def stop_stream(request: Request) -> Response:
    conversation_id = check_conversation_id(request.query_params.get("conv_id", ""))
    streams, remote = router_state(request).streams, http_state(request).remote
    if streams.get(conversation_id) is None and remote is not None:
        await remote.stop(conversation_id)
    else:
        streams.delete(conversation_id)
    return Response(status_code=204)


async def lookup_streams(request: Request) -> Response:
    body = decode_body(await read_body(request), LookupRequest)
    rows = router_state(request).streams.lookup(body.conversation_ids)
    remote = http_state(request).remote
    if remote is not None:
        rows = await remote.lookup(body.conversation_ids, rows)
    return json_response(rows)


routes = [
    Route("/v1/stream", follow_stream, methods=["GET"]),
    Route("/v1/stream", stop_stream, methods=["DELETE"]),
    Route("/v1/streams/lookup", lookup_streams, methods=["POST"]),
]
