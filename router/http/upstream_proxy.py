"""A request for a model another server serves, proxied by the HTTP process that took it: the
upstream's answer goes to the client as it arrives, and a client that leaves closes the
upstream request."""

from __future__ import annotations

import time

from router.http.responses import SSE_HEADERS, FollowingResponse, Send, send_json, unless
from router.metrics import RequestClock
from router.upstream import UpstreamClient, UpstreamRoute, chunks
from workers.errors import ApiError


class UpstreamResponse(FollowingResponse):
    def __init__(
        self,
        client: UpstreamClient,
        route: UpstreamRoute,
        api_route: str,
        body: bytes,
        clock: RequestClock,
    ) -> None:
        super().__init__()
        self._client = client
        self._route = route
        self._api_route = api_route
        self._body = body
        self._clock = clock
        self._started = False

    async def _respond(self, send: Send) -> None:
        try:
            await unless(self._relay(send), self._left.wait())
        except ApiError as error:
            if self._started:
                await send({"type": "http.response.body", "body": error.sse(), "more_body": False})
            else:
                await send_json(send, error.status, error.json())

    async def _relay(self, send: Send) -> bool:
        route, clock = self._route, self._clock
        base = route.target.base
        clock.sent(0.0, time.monotonic_ns())
        request = self._client.open(route.target, route.model_id, self._api_route, self._body)
        async with request as response:
            answered_ns = time.monotonic_ns()
            media = response.headers.get("content-type", "application/json")
            if not media.startswith("text/event-stream"):
                answer = b"".join([chunk async for chunk in chunks(response, base)])
                timing = clock.server_timing(answered_ns)
                await send_json(send, response.status, answer, [timing], media.encode())
                return True
            headers = [*SSE_HEADERS, clock.server_timing(answered_ns)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self._started = True
            clock.streaming()
            async for chunk in chunks(response, base):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                clock.relayed(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
