"""Whether each upstream server is up, and what the `--upstream` ones serve: every
--upstream-check-seconds the main process asks each server's models route. An answer marks the
server's models loaded, a failure unavailable with its reason; a `--upstream` server whose list
changed makes the catalog be read again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from router.config import RouterConfig
from router.control.inbox import UpstreamChecked
from router.control.supervisor import Supervisor
from router.upstream import UpstreamServer, UpstreamTarget

log = logging.getLogger("llama-router")

CHECK_TIMEOUT = 3.0


class ModelList(msgspec.Struct):
    class Entry(msgspec.Struct):
        id: str

    data: list[Entry]


class UpstreamWatch:
    def __init__(
        self,
        config: RouterConfig,
        supervisor: Supervisor,
        reload: Callable[[], Awaitable[None]],
    ) -> None:
        self._config = config
        self._supervisor = supervisor
        self._reload = reload
        self.listed: dict[UpstreamServer, list[str]] = {}  # what each --upstream serves
        self._task: asyncio.Task[None] | None = None
        self._decode = msgspec.json.Decoder(ModelList).decode

    def start(self) -> None:
        """Always: a catalog read again later may bring upstream models."""
        self._task = asyncio.get_running_loop().create_task(self._check_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _targets(self) -> dict[str, UpstreamTarget]:
        """One target per server base URL of the catalog's upstream models (its API key)."""
        return {
            upstream.base: upstream
            for model in self._supervisor.models.values()
            if (upstream := model.spec.upstream) is not None
        }

    async def _check_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            while True:
                await self.check(client)
                await asyncio.sleep(self._config.upstream_check_seconds)

    async def check(self, client: aiohttp.ClientSession) -> None:
        servers = {server.base: server for server in self._config.upstreams}
        targets = self._targets()
        bases = sorted({*servers, *targets})
        asks = (self._ask(client, base, targets.get(base)) for base in bases)
        answers = await asyncio.gather(*asks)
        listed = dict(self.listed)
        for base, (ids, unreachable) in zip(bases, answers, strict=True):
            self._supervisor.post(UpstreamChecked(base, unreachable))
            if base in servers and ids is not None:
                listed[servers[base]] = ids
        if listed != self.listed:  # its models come in already checked
            self.listed = listed
            await self._reload()

    async def _ask(
        self, client: aiohttp.ClientSession, base: str, target: UpstreamTarget | None
    ) -> tuple[list[str] | None, str | None]:
        """The ids the server lists, or why it did not answer."""
        headers = target.headers() if target is not None else {}
        try:
            async with client.get(base.rstrip("/") + "/models", headers=headers) as response:
                if response.status != 200:
                    return None, f"its models route answered {response.status}"
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        try:
            return [entry.id for entry in self._decode(answer).data], None
        except msgspec.DecodeError as error:
            return None, f"its models route answered no model list: {error}"
