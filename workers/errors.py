"""The OpenAI error shape shared by the router and its workers."""

from __future__ import annotations

from typing import Any

import msgspec

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """A failure the client can read: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message, "type": self.type}}

    def json(self) -> bytes:
        return msgspec.json.encode(self.body())

    def sse(self) -> bytes:
        """The final event of a stream that failed after it started."""
        return b"data: " + self.json() + b"\n\n"
