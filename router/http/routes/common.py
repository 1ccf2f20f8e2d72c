"""What every route family needs: the router's state, bounded bodies, query flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from workers.errors import ApiError

if TYPE_CHECKING:
    from router.control.state import RouterState
    from router.http.state import HttpState

JSON = "application/json"
SUCCESS = b'{"success":true}'


def router_state(request: Request) -> RouterState:
    """The supervisor's side: only routes served in the main process use it."""
    return request.app.state.router


def http_state(request: Request) -> HttpState:
    return request.app.state.http


async def read_body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes the configured cap."""
    limit = http_state(request).config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def query_flag(request: Request, name: str, default: bool) -> bool:
    """llama-server's reading of `?autoload=`: "true" or "1" is on, anything else given is off."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    return value.lower() in ("true", "1")


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type=JSON)


def success() -> Response:
    return Response(SUCCESS, media_type=JSON)
