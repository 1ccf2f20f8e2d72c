"""The pure parts of sharing: the CPU budget, the slot choice and the batch of one step."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from workers.cores import thread_shares
from workers.engines.decoder import LOOKAHEAD, Sequence, Slot, choose_slot, plan_step


def test_the_cores_are_split_among_busy_workers_only() -> None:
    assert thread_shares(2, [2]) == [2]  # alone, a model gets every core
    assert thread_shares(2, [2, 0, 2]) == [1, 0, 1]  # an idle worker holds no share
    assert thread_shares(8, [8, 8, 8]) == [3, 3, 2]  # the odd thread goes to the earlier cell
    assert thread_shares(2, [2, 2, 2]) == [1, 1, 1]  # more busy workers than cores: one each
    assert thread_shares(8, [1, 8, 8]) == [1, 4, 3]  # a cap leaves its rest to the others
    assert thread_shares(4, [0, 0]) == [0, 0]
    assert thread_shares(0, [4]) == [1]


def _sequence(prompt: list[int], fed: int = 0, next_token: int | None = None) -> Sequence:
    ready = threading.Condition()
    sequence = Sequence(Slot(0), prompt, 0, None, None, lambda: False, ready, fed=fed)
    sequence.next_token = next_token
    return sequence


def test_a_prompt_goes_to_the_slot_that_holds_most_of_it() -> None:
    stale, alike, empty = Slot(0, [9, 9, 9], last_used=1.0), Slot(1, [1, 2, 3]), Slot(2)
    assert choose_slot([stale, alike, empty], [1, 2, 3, 4]) is alike
    # nothing alike enough: an empty slot, else the one used longest ago
    assert choose_slot([stale, alike, empty], [7, 7, 7, 7]) is empty
    assert choose_slot([stale, alike], [7, 7, 7, 7]) is alike
    kept = Slot(3, kept=(Path("slot-3.bin"), [1, 2, 3]))  # a cache on disk counts as held
    assert choose_slot([stale, kept], [1, 2, 3, 4]) is kept


def test_a_step_takes_every_next_token_then_prompt_chunks_within_the_batch() -> None:
    generating = _sequence([1, 2], fed=2, next_token=5)
    reading = _sequence(list(range(100)))
    behind = _sequence([1], fed=1, next_token=6)
    behind.out = deque([0] * LOOKAHEAD)  # its reader has not taken what it already has
    later = _sequence(list(range(10)))
    plan = plan_step([generating, reading, behind, later], n_batch=64)
    assert [(len(tokens), sampled) for _, tokens, sampled in plan] == [(1, True), (63, False)]
    assert plan[0][0] is generating and plan[1][0] is reading
    reading.fed = 63
    plan = plan_step([reading, later], n_batch=64)
    assert [(len(tokens), sampled) for _, tokens, sampled in plan] == [(37, True), (10, True)]
