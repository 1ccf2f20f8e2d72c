"""The supervisor's inbox: every event that may change the model table, typed. The routes of
every HTTP process (the others' through router/control/port.py), the workers and the clock
post them; they are read one at a time, in order (router/control/supervisor.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from router.catalog import ModelSpec
from router.control.processes import WorkerProcess
from router.control.table import Lease, Model
from workers.protocol import Event


@dataclass(eq=False)
class Want:
    """A request's claim on its model until it gets a lease, or an error."""

    model: Model
    autoload: bool
    touch: bool  # a request, not a look at the model's props or slots
    reply: asyncio.Future[Lease]
    arrived: float = field(default_factory=time.monotonic)
    failed_loads: int = 0  # the model's count on arrival: a failed load since is the answer
    held_until: float = 0.0  # LLAMA_SERVER_DEBUG_FAKE_TIMING: its load starts later


@dataclass(frozen=True, eq=False)
class RequestArrived:
    want: Want


@dataclass(frozen=True, eq=False)
class ClientLeft:
    """The client gave up waiting: its claim goes (and a lease it was given meanwhile)."""

    want: Want


@dataclass(frozen=True, eq=False)
class Released:
    """The worker let go of the request: its model is free of it."""

    lease: Lease


@dataclass(frozen=True, eq=False)
class LoadAsked:
    """POST /models/load."""

    model: Model
    reply: asyncio.Future[None]


@dataclass(frozen=True, eq=False)
class UnloadAsked:
    """POST /models/unload."""

    model: Model
    reply: asyncio.Future[None]


@dataclass(frozen=True, eq=False)
class RemoveAsked:
    """DELETE /models: answered once the model's worker is gone."""

    model: Model
    reply: asyncio.Future[None]


@dataclass(frozen=True, eq=False)
class CatalogRead:
    """The models dir, presets and cache were read again."""

    specs: dict[str, ModelSpec]
    reply: asyncio.Future[None]


@dataclass(frozen=True, eq=False)
class WorkerReported:
    model: Model
    worker: WorkerProcess
    event: Event


@dataclass(frozen=True, eq=False)
class WorkerExited:
    """The worker's process ended, or (`spare`) it freed its model and waits for another."""

    model: Model
    worker: WorkerProcess
    code: int
    spare: bool = False


@dataclass(eq=False)
class SentDirect:
    """An HTTP process sent a request straight to the worker of pid `worker_pid`: count the
    model busy (`lease`, None when that worker is no longer the model's)."""

    model_id: str
    worker_pid: int
    lease: Lease | None = None


@dataclass(frozen=True, eq=False)
class UpstreamChecked:
    """An upstream server answered its models route (`unreachable` None), or why it did not."""

    base: str
    unreachable: str | None


@dataclass(frozen=True, eq=False)
class Tick:
    now: float


@dataclass(frozen=True, eq=False)
class Stop:
    """Shutting down: stop every worker; the reply is what to wait for."""

    reply: asyncio.Future[list[Awaitable[int]]]


InboxEvent = (
    RequestArrived
    | ClientLeft
    | Released
    | SentDirect
    | LoadAsked
    | UnloadAsked
    | RemoveAsked
    | CatalogRead
    | WorkerReported
    | WorkerExited
    | UpstreamChecked
    | Tick
    | Stop
)
