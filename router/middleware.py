"""ASGI middleware of the router: API keys."""

from __future__ import annotations

import hmac
from typing import Any

from workers.errors import ApiError

Scope = dict[str, Any]

# llama-server leaves these open so that health checks and model pickers work without a key.
PUBLIC = frozenset(
    {("GET", "/health"), ("GET", "/v1/health"), ("GET", "/models"), ("GET", "/v1/models")}
)
INVALID_KEY = ApiError(401, "Invalid API Key")


class ApiKeys:
    """Every route but the public ones needs `Authorization: Bearer K` or `X-Api-Key: K`."""

    def __init__(self, app: Any, keys: list[str]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = INVALID_KEY.json()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        if (scope["method"], scope["path"]) in PUBLIC or scope["method"] == "OPTIONS":
            return True
        offered = []
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].strip())
            elif name == b"x-api-key":
                offered.append(value.strip())
        # every key is compared, so the time taken does not tell which one nearly matched
        matches = [hmac.compare_digest(given, key) for given in offered for key in self._keys]
        return any(matches)
