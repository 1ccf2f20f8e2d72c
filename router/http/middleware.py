"""ASGI middleware of the router: API keys, and CORS as llama-server answers it."""

from __future__ import annotations

import hmac
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response

from workers.errors import ApiError

if TYPE_CHECKING:
    from router.metrics import RouterMetrics

Scope = dict[str, Any]

# llama-server leaves these open so that health checks and model pickers work without a key.
PUBLIC = frozenset(
    {("GET", "/health"), ("GET", "/v1/health"), ("GET", "/models"), ("GET", "/v1/models")}
)
INVALID_KEY = ApiError(401, "Invalid API Key")
# The web page (`/` and its files under /web/) is public too, as llama-server's web UI is.
PAGE_FILES = "/web/"


def is_page(scope: Scope) -> bool:
    path = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (path == "/" or path.startswith(PAGE_FILES))


class ApiKeys:
    """Every route but the public ones needs `Authorization: Bearer K` or `X-Api-Key: K`."""

    def __init__(self, app: Any, keys: list[str], public: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]
        self._public = public

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = INVALID_KEY.json()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        if (scope["method"], scope["path"]) in self._public or scope["method"] == "OPTIONS":
            return True
        if is_page(scope):
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


# llama-server's `--cors-origins localhost`: a page served from this machine, on any port.
LOCALHOST_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


class LlamaServerCors(CORSMiddleware):
    """Starlette's CORS with llama-server's answers: every OPTIONS request gets 200 (a browser
    reads the allow headers, not the status), `localhost` stands for every local origin, and an
    origin that is not allowed simply gets no Access-Control-Allow-Origin."""

    def __init__(
        self,
        app: Any,
        origins: list[str],
        methods: list[str],
        headers: list[str],
        credentials: bool,
    ) -> None:
        wildcard = "*" in origins
        super().__init__(
            app,
            allow_origins=[origin for origin in origins if origin != "localhost"],
            allow_origin_regex=LOCALHOST_ORIGINS if "localhost" in origins else None,
            allow_methods=methods,
            allow_headers=headers,
            allow_credentials=credentials and not wildcard,  # never a wildcard with credentials
        )

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            request_headers = Headers(scope=scope)
            if "origin" in request_headers and "access-control-request-method" in request_headers:
                response = self.preflight_response(request_headers=request_headers)
            else:
                response = PlainTextResponse("", headers={"Allow": ", ".join(self.allow_methods)})
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("access-control-allow-origin", "content-length")
        }
        return PlainTextResponse("", headers=headers)


class RequestTimer:
    """Times every HTTP request until its last byte, by route and status class, for /metrics."""

    def __init__(self, app: Any, metrics: RouterMetrics) -> None:
        self.app = app
        self._seconds = metrics.request_seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            # the route's template, so that paths nobody serves do not each make a series
            route = getattr(scope.get("route"), "path", "other")
            self._seconds.labels(route, f"{status // 100}xx").observe(time.perf_counter() - started)
