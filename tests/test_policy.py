"""The supervisor's scheduling rules, as the pure deciders apply them: no process, no loop."""

from __future__ import annotations

from router.catalog import ModelSpec
from router.control.policy import Drain, Drop, Evict, Start, Undrain, next_step, pick_victim
from router.control.table import Model, Status


def model(
    name: str,
    status: Status = Status.LOADED,
    in_flight: int = 0,
    wanted: int = 0,
    last_used: float = 0.0,
    pin: bool = False,
    draining: bool = False,
) -> Model:
    row = Model(ModelSpec(id=name, source="models_dir", path=f"/{name}.gguf", pin=pin))
    row.status, row.in_flight, row.wanted = status, in_flight, wanted
    row.last_used, row.draining = last_used, draining
    return row


def test_the_head_of_the_queue_takes_a_free_slot() -> None:
    waiting = model("b", Status.UNLOADED, wanted=1)
    assert next_step([waiting], [model("a"), waiting], models_max=2) == Start(waiting)


def test_no_limit_means_every_head_starts() -> None:
    waiting = model("z", Status.UNLOADED, wanted=1)
    others = [model(str(n)) for n in range(10)]
    assert next_step([waiting], [*others, waiting], models_max=0) == Start(waiting)


def test_an_entry_nobody_waits_for_or_already_running_is_dropped() -> None:
    left = model("b", Status.UNLOADED, wanted=0)
    running = model("c", Status.LOADING, wanted=2)
    assert next_step([left], [left], models_max=1) == Drop(left)
    assert next_step([running], [running], models_max=1) == Drop(running)


def test_at_the_cap_the_least_recently_used_idle_model_is_the_victim() -> None:
    older, newer = model("old", last_used=1.0), model("new", last_used=2.0)
    waiting = model("w", Status.UNLOADED, wanted=1)
    step = next_step([waiting], [newer, older, waiting], models_max=2)
    assert step == Evict(older, waiting)


def test_busy_pinned_and_queued_models_are_never_victims() -> None:
    busy = model("busy", in_flight=1, last_used=0.0)
    pinned = model("pinned", pin=True, last_used=0.0)
    wanted = model("wanted", wanted=1, last_used=0.0)
    idle = model("idle", last_used=9.0)
    assert pick_victim([busy, pinned, wanted, idle], protected=set()) is idle
    assert pick_victim([busy, pinned, wanted, idle], protected={"idle"}) is None


def test_the_queue_waits_while_a_slot_is_on_its_way() -> None:
    stopping = model("s", Status.STOPPING)
    waiting = model("w", Status.UNLOADED, wanted=1)
    assert next_step([waiting], [stopping, model("a", last_used=0.0), waiting], 2) is None


def test_a_head_being_stopped_waits_for_its_worker_to_go() -> None:
    head = model("h", Status.STOPPING, wanted=1)
    assert next_step([head], [head], models_max=4) is None


def test_with_no_idle_model_the_least_recently_used_busy_one_drains() -> None:
    older = model("old", in_flight=1, last_used=1.0)
    newer = model("new", in_flight=1, last_used=2.0)
    waiting = model("w", Status.UNLOADED, wanted=1)
    assert next_step([waiting], [newer, older, waiting], 2) == Drain(older, waiting)


def test_a_model_that_owes_first_answers_is_not_drained_and_one_drain_at_a_time() -> None:
    owing = model("owing", in_flight=1, wanted=1, last_used=0.0)
    busy = model("busy", in_flight=1, last_used=5.0)
    waiting = model("w", Status.UNLOADED, wanted=1)
    assert next_step([waiting], [owing, busy, waiting], 2) == Drain(busy, waiting)
    busy.draining = True
    assert next_step([waiting], [owing, busy, waiting], 2) is None


def test_a_drained_model_once_idle_is_the_victim() -> None:
    drained = model("d", wanted=1, draining=True)  # requests wait to reload it later
    waiting = model("w", Status.UNLOADED, wanted=1)
    assert next_step([waiting], [drained, waiting], 1) == Evict(drained, waiting)


def test_with_nobody_waiting_draining_models_take_requests_again() -> None:
    drained = model("d", in_flight=1, draining=True)
    assert next_step([], [drained, model("x")], 1) == Undrain((drained,))
    assert next_step([], [model("x")], 1) is None
