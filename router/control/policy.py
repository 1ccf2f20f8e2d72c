"""The supervisor's decisions, as pure functions over the model table: what the queue does
next, which idle model is the victim, which busy one drains. They change nothing; the
supervisor acts on what they return (router/control/supervisor.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from router.control.table import Model, Status


@dataclass(frozen=True)
class Drop:
    """The head of the queue needs no slot any more (nobody waits, or it runs already)."""

    model: Model


@dataclass(frozen=True)
class Start:
    """The head takes a free slot."""

    model: Model


@dataclass(frozen=True)
class Evict:
    """No slot is free: `victim`, idle, is stopped for the head."""

    victim: Model
    head: Model


@dataclass(frozen=True)
class Drain:
    """No slot is free and no model is idle: `model` takes no new requests, and once its
    current ones are done it is the victim."""

    model: Model
    head: Model


@dataclass(frozen=True)
class Undrain:
    """Nobody waits for a slot any more: the draining models take requests again."""

    models: tuple[Model, ...]


Step = Drop | Start | Evict | Drain | Undrain | None  # None: wait for the next change


def next_step(queue: Sequence[Model], models: Collection[Model], models_max: int) -> Step:
    """What the FIFO queue of models waiting for a slot does next."""
    if not queue:
        draining = tuple(model for model in models if model.draining)
        return Undrain(draining) if draining else None
    head = queue[0]
    if head.status is Status.STOPPING:
        return None  # it gets its turn once its worker is gone
    if head.wanted == 0 or head.status is not Status.UNLOADED:
        return Drop(head)
    running = sum(1 for model in models if model.status.running)
    if models_max <= 0 or running < models_max:
        return Start(head)
    if any(model.status is Status.STOPPING for model in models):
        return None  # a slot is already on its way
    queued = {model.id for model in queue}
    victim = pick_victim(models, queued)
    if victim is not None:
        return Evict(victim, head)
    if not any(model.draining for model in models):
        drain = pick_drain(models, queued)
        if drain is not None:
            return Drain(drain, head)
    return None


def pick_victim(models: Iterable[Model], protected: set[str]) -> Model | None:
    """The least recently used model that may be stopped to free a slot, if any."""
    candidates = [
        model
        for model in models
        if model.status in (Status.LOADED, Status.SLEEPING)
        and model.in_flight == 0
        and (model.wanted == 0 or model.draining)
        and not model.spec.pin
        and model.id not in protected
    ]
    return min(candidates, key=lambda model: model.last_used, default=None)


def pick_drain(models: Iterable[Model], protected: set[str]) -> Model | None:
    """With every slot busy, the least recently used busy model that should finish and go.
    One that still owes a first answer to requests that waited for it is left alone."""
    candidates = [
        model
        for model in models
        if model.status is Status.LOADED
        and model.in_flight > 0
        and model.wanted == 0
        and not model.spec.pin
        and model.id not in protected
    ]
    return min(candidates, key=lambda model: model.last_used, default=None)
