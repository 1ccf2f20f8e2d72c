"""How many cores the model workers may use now: the budget less what other programs take.

Measured once a tick from the kernel's CPU counters: all busy time, less the time of this router
and its workers. Niced programs (a background build, a backup) yield to the workers anyway, so
their time is not counted against the budget.
"""

from __future__ import annotations

import os
import time

import psutil

from workers.cores import CoreTable

# Another program counts as a core taken once it keeps most of one busy.
_TAKEN_FROM = 0.6


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
        self._seconds: dict[int, tuple[psutil.Process, float]] = {}
        self._last: tuple[float, float] | None = None
        table.publish(budget)

    def _our_seconds_since(self) -> float:
        """CPU seconds this router and its workers used since the last call (a process's whole
        time when it is new; a cached psutil object keeps a pid's identity)."""
        spent = 0.0
        seconds: dict[int, tuple[psutil.Process, float]] = {}
        for found in [self._router, *self._router.children(recursive=True)]:
            process, before = self._seconds.get(found.pid, (found, 0.0))
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total = times.user + times.system
            seconds[found.pid] = (process, total)
            spent += total - before
        self._seconds = seconds
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
