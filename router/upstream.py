"""Models served by another OpenAI-compatible server (vLLM, llama-server, another llama-router):
where they are, and one pooled client that sends them requests.

The HTTP processes proxy plain requests themselves; the main process copies a session's answer
into its ring (router/control/upstream_sessions.py). Both go through `UpstreamClient`, which
retries a connection that fails before the first byte and keeps a circuit breaker per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import msgspec

from workers.errors import ApiError

# the router's routes an upstream serves, and their path under its base URL
UPSTREAM_PATHS = {
    "/v1/chat/completions": "/chat/completions",
    "/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/completions": "/completions",
    "/v1/embeddings": "/embeddings",
    "/embeddings": "/embeddings",
}
CONNECT_SECONDS = 5.0
RETRIES = 3  # more tries after the first, on errors before a byte was sent
BACKOFF_SECONDS = 0.1  # doubled after each try
BREAKER_FAILURES = 3  # in a row, before the circuit opens
BREAKER_SECONDS = 10.0  # the circuit stays open this long, then lets one request probe
ERROR_BYTES = 64 * 1024  # of an upstream's error body, passed on


class UpstreamServer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`--upstream [PREFIX=]URL`: every model the server lists, as `PREFIX/ID`."""

    prefix: str
    base: str


def parse_upstream_server(value: str) -> UpstreamServer:
    prefix, _, base = value.partition("=") if "=" in value.split("://")[0] else ("", "", value)
    base = upstream_base(base)
    return UpstreamServer(prefix or str(urlsplit(base).hostname), base)


def upstream_base(value: str) -> str:
    """An OpenAI base URL, checked."""
    try:
        url = urlsplit(value)
        valid = url.scheme in ("http", "https") and bool(url.hostname)
        url.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"an upstream is http(s)://HOST[:PORT]/BASE, not {value!r}")
    return value.rstrip("/")


class UpstreamTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model as its upstream knows it."""

    base: str  # the OpenAI base URL, such as http://gpu-box:8000/v1
    model: str  # its name there
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class UpstreamRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a request for an upstream model goes: the model's id here, and its target."""

    model_id: str
    target: UpstreamTarget


def upstream_path(route: str, model_id: str) -> str:
    path = UPSTREAM_PATHS.get(route)
    if path is None:
        served = ", ".join(sorted(UPSTREAM_PATHS))
        raise ApiError(400, f"model '{model_id}' is remote, served on {served}; not on {route}")
    return path


def rewrite_model(body: bytes, model: str) -> bytes:
    """The request as the upstream expects it: its own name for the model."""
    request = msgspec.json.decode(body)
    if not isinstance(request, dict):
        raise ApiError(400, "the request body must be a JSON object")
    request["model"] = model
    return msgspec.json.encode(request)


@dataclass
class Breaker:
    """Stops sending to a server that keeps failing; after a pause it lets one request through
    to find out whether the server is back."""

    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def admit(self, base: str) -> None:
        if self.failures < BREAKER_FAILURES:
            return
        now = time.monotonic()
        if now < self.open_until or self.probing:
            wait = max(0.0, self.open_until - now)
            raise ApiError(
                503, f"upstream {base} keeps failing; the next try goes through in {wait:.0f} s"
            )
        self.probing = True

    def let_go(self) -> None:
        """The request went without an answer either way (its client left): another may probe."""
        self.probing = False

    def succeeded(self) -> None:
        self.failures, self.probing = 0, False

    def failed(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= BREAKER_FAILURES:
            self.open_until = time.monotonic() + BREAKER_SECONDS


class UpstreamClient:
    """One pooled HTTP client for every upstream of this process (aiohttp: its C parser costs a
    fraction of a pure-Python client's time per request, which is most of a hop's cost)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_SECONDS, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._breakers: dict[str, Breaker] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the loop that uses it
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False
            )
        return self._session

    @contextlib.asynccontextmanager
    async def open(
        self, target: UpstreamTarget, model_id: str, route: str, body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response to `body` for `route`, its body not read yet; an upstream
        error is raised as the client should see it."""
        path = upstream_path(route, model_id)
        breaker = self._breakers.setdefault(target.base, Breaker())
        breaker.admit(target.base)
        url = target.base.rstrip("/") + path
        content = rewrite_model(body, target.model)
        # identity: the answer is passed on as it comes, and a client that asked for no
        # compression must not get it compressed
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            **target.headers(),
        }
        try:
            response = await self._send(url, content, headers, target.base, breaker)
        except BaseException:
            breaker.let_go()  # a cancelled probe must not keep the circuit shut for good
            raise
        try:
            if response.status >= 400:
                await _raise_error(response, target.base, breaker)
            breaker.succeeded()
            yield response
        finally:
            response.release()

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str], base: str, breaker: Breaker
    ) -> aiohttp.ClientResponse:
        """The response's head; a connection refused, or a kept-alive one the server had
        closed, before anything came back is tried again."""
        for attempt in range(RETRIES + 1):
            try:
                return await self.session.post(url, data=body, headers=headers)
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as error:
                if attempt == RETRIES:
                    breaker.failed()
                    message = f"upstream {base} is unreachable: {_reason(error)}"
                    raise ApiError(502, message) from error
                await asyncio.sleep(BACKOFF_SECONDS * 2**attempt)
            except TimeoutError as error:
                breaker.failed()
                raise ApiError(504, f"upstream {base} sent nothing in time") from error
            except aiohttp.ClientError as error:
                breaker.failed()
                raise ApiError(502, f"upstream {base} failed: {_reason(error)}") from error
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def chunks(response: aiohttp.ClientResponse, base: str) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives; a connection cut midway raises an ApiError."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError as error:
        raise ApiError(504, f"upstream {base} went silent") from error
    except aiohttp.ClientError as error:
        raise ApiError(502, f"upstream {base} cut its answer: {_reason(error)}") from error


async def _raise_error(response: aiohttp.ClientResponse, base: str, breaker: Breaker) -> None:
    """An upstream's error as the client sees it: its own OpenAI error body when it has one."""
    if response.status >= 500:
        breaker.failed()
    else:
        breaker.succeeded()
    body = b""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        body = await response.content.read(ERROR_BYTES)
    raise UpstreamError(response.status, body, base)


class UpstreamError(ApiError):
    """An error the upstream answered, passed on as it wrote it if it is OpenAI-shaped."""

    def __init__(self, status: int, body: bytes, base: str) -> None:
        try:
            error = msgspec.json.decode(body)["error"]
            message = str(error["message"] if isinstance(error, dict) else error)
            self._body: bytes | None = body
        except (msgspec.DecodeError, KeyError, TypeError):
            text = body.decode(errors="replace").strip()[:500]
            message = f"upstream {base} answered {status}: {text}"
            self._body = None
        super().__init__(status, message)

    def json(self) -> bytes:
        return self._body if self._body is not None else super().json()


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__
