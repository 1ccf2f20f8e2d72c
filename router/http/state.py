"""What every HTTP process has, the main one and the others alike: its settings, its rings and
their wake-ups, the session index to read, the model events for its subscribers, and its
channel to the supervisor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.config import RouterConfig
from router.events import EventHub
from router.http.exchanges import Exchange, Exchanges
from router.http.remote_sessions import RemoteSessions
from router.messages import Admission, Admitted
from router.metrics import RouterMetrics
from router.upstream import UpstreamClient, UpstreamRoute
from workers.session_index import SessionIndex


class Control(Protocol):
    """The supervisor, as an HTTP process's routes ask it for models."""

    # True when `admit` only sends the request on and never waits: a client that leaves
    # meanwhile is seen by its response, which tells the supervisor
    admits_at_once: bool

    async def admit(self, admission: Admission, exchange: Exchange) -> None:
        """Send the request to its model: once this returns, its answer (or, in
        `exchange.failure`, why there is none) comes into the exchange's ring."""

    async def start_session(self, admission: Admission) -> Admitted: ...

    def upstream(self, name: str) -> UpstreamRoute | None:
        """Where a request for `name` goes if another server serves that model."""


@dataclass
class HttpState:
    config: RouterConfig
    events: EventHub
    exchanges: Exchanges
    sessions: SessionIndex
    control: Control
    metrics: RouterMetrics
    upstream_client: UpstreamClient
    remote: RemoteSessions | None = None  # other replicas' sessions, with --sessions-redis

    def stop(self) -> None:
        """Stopping: end the generations this process serves and its event streams."""
        self.exchanges.cancel_all()
        self.events.close()

    async def close(self) -> None:
        await self.exchanges.drain()
        self.exchanges.close_rings()
        self.exchanges.watch.close()
        await self.upstream_client.close()
        if self.remote is not None:
            await self.remote.close()
