"""The model table's rows: a model's state as the supervisor keeps it, and a request's claim
on a running model. Only the supervisor changes a row; routes read them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from router.catalog import ModelSpec
from router.control.processes import WorkerProcess
from router.metrics import EngineTotals


class Status(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    SLEEPING = "sleeping"
    STOPPING = "stopping"

    @property
    def running(self) -> bool:
        return self is not Status.UNLOADED

    @property
    def public(self) -> str:
        # A model keeps answering "loaded" until its worker is gone, as llama-server's router does.
        return "loaded" if self is Status.STOPPING else self.value


@dataclass(eq=False)
class Model:
    spec: ModelSpec
    status: Status = Status.UNLOADED
    worker: WorkerProcess | None = None
    in_flight: int = 0
    wanted: int = 0
    last_used: float = 0.0
    idle_since: float = 0.0
    failed: bool = False
    exit_code: int | None = None
    load_error: str | None = None
    failed_loads: int = 0
    progress: float | None = None
    info: dict[str, Any] | None = None
    version: int = 0
    removed: bool = False
    # Chosen to give up its slot once its requests are done: takes no new ones meanwhile, so
    # that a model waiting in the queue cannot starve behind models that never go idle.
    draining: bool = False
    load_started: float = 0.0
    engine: EngineTotals = field(default_factory=EngineTotals)
    # an upstream model's: whether its server was asked yet, and why it did not answer
    checked: bool = False
    unreachable: str | None = None
    # where HTTP processes send requests straight to its worker while it is ready
    # (workers/direct.py); the worker's address since it last loaded or woke
    direct: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def public_status(self) -> str:
        """An upstream model is loaded while its server answers (loading until it is asked)."""
        if self.spec.upstream is not None:
            if not self.checked:
                return "loading"
            return "unavailable" if self.unreachable else "loaded"
        return self.status.public

    @property
    def ready(self) -> bool:
        """Whether a request for it is served at once."""
        return self.status is Status.LOADED and not self.draining and self.worker is not None

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.wanted == 0

    def mark_changed(self) -> None:
        self.version += 1


@dataclass(eq=False)
class Lease:
    """A request's claim on a running model; the model counts as busy until it is released."""

    model: Model
    worker: WorkerProcess
    touch: bool
    released: bool = False
    waited: float = 0.0  # seconds until the model could take it


def load_progress(value: float) -> dict[str, Any]:
    """llama-server's shape of a load's progress (one stage: the text model)."""
    return {"stages": ["text_model"], "current": "text_model", "value": value}
