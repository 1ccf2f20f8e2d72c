"""How many cores the model workers may use now: the budget less what other programs take.

Measured once a tick from the kernel's CPU counters: all busy time, less the time of this router
and its workers. Niced programs (a background build, a backup) yield to the workers anyway, so
their time is not counted against the budget.
"""

from __future__ import annotations

import os
import resource
import time

import psutil

from workers.cores import CoreTable

# Another program counts as a core taken once it keeps most of one busy.
_TAKEN_FROM = 0.6


def _reaped_children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    parts = ("user", "system", "irq", "softirq", "steal")  # not nice, idle or iowait
    return sum(float(getattr(times, part, 0.0)) for part in parts)


class CoreMeter:
    """Publishes the cores left for the workers into the shared table, once a tick."""

    def __init__(self, table: CoreTable, budget: int) -> None:
        self.table = table
        self.budget = budget
        self._router = psutil.Process(os.getpid())
        self._ours = 0.0
        self._last: tuple[float, float] | None = None
        table.publish(budget)

    def _our_seconds_since(self) -> float:
        """CPU seconds this router and its workers used since the last call. Children that
        ended meanwhile count through the kernel's tally of reaped children: otherwise a
        worker that exits (an unload, a spare let go) would count as another program's load
        and take a core from the models for the next tick."""
        total = 0.0
        for process in [self._router, *self._router.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        # Read after the live ones: a child reaped in between counts twice, not never.
        total += _reaped_children_seconds()
        spent = total - self._ours
        self._ours = total
        return spent

    def measure(self) -> None:
        now, busy = time.monotonic(), _busy_seconds()
        ours = self._our_seconds_since()
        if self._last is not None:
            then, busy_before = self._last
            others = max(0.0, busy - busy_before - ours) / max(now - then, 1e-3)
            taken = int(others + (1 - _TAKEN_FROM))
            self.table.publish(self.budget - taken)
        self._last = (now, busy)
