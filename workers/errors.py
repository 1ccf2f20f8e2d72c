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
    """A failure the client can read: an HTTP status and a message. A subclass may name its own
    `type` and add `details`, fields of the error object beside the usual three."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details: dict[str, Any] = {}

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        error = {"code": self.status, "message": self.message, "type": self.type}
        return {"error": {**error, **self.details}}

    def json(self) -> bytes:
        return msgspec.json.encode(self.body())

    def sse(self) -> bytes:
        """The final event of a stream that failed after it started."""
        return b"data: " + self.json() + b"\n\n"


class ContextExceeded(ApiError):
    """A prompt longer than the context, told as llama-server tells it: its own type, and the
    two sizes for a client that shortens the prompt and tries again."""

    def __init__(self, n_prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            400,
            f"request ({n_prompt_tokens} tokens) exceeds the available context size "
            f"({n_ctx} tokens), try increasing it",
        )
        self.details = {"n_prompt_tokens": n_prompt_tokens, "n_ctx": n_ctx}

    @property
    def type(self) -> str:
        return "exceed_context_size_error"
