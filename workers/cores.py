"""The CPU budget shared by every model worker, in memory the router and its workers all map.

llama.cpp's threads wait for each other at barriers many times per token, so a thread that is
not running stalls the rest: two busy workers with one thread per core each, or one worker
beside another busy program, run many times slower than one thread would. So the threads of
all decoding workers together never exceed the cores that are free for them. Cell 0 holds those
cores (the router's `--threads` budget less what other programs use); each worker owns one more
cell, where it writes how many threads it could use while it decodes (its cap) and 0 when idle.
Before every decode a worker reads the table and takes its share, and writes the threads it
decodes with into its second cell, past the first CELLS + 1, for the router to show.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from collections.abc import Sequence

import psutil

CELLS = 64  # workers at once, spares included; a worker beyond that decodes with its cap


def physical_cores() -> int:
    """llama-server's default thread count: one per physical core."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def thread_shares(cores: int, wants: Sequence[int]) -> list[int]:
    """Each worker's threads: `cores` split evenly among the busy ones (those that want more
    than 0), none above what it wants; what a capped worker leaves goes to the others, and an
    odd thread to the earlier cells. Every busy worker gets at least one."""
    shares = [0] * len(wants)
    waiting = sorted((cell for cell, want in enumerate(wants) if want > 0), key=lambda c: wants[c])
    left = max(cores, 0)
    while waiting:
        even = left // len(waiting)
        smallest = waiting[0]
        if wants[smallest] <= even:
            shares[smallest] = wants[smallest]
            left -= wants[smallest]
            waiting.pop(0)
            continue
        extra = left - even * len(waiting)
        for rank, cell in enumerate(sorted(waiting)):
            shares[cell] = max(1, even + (1 if rank < extra else 0))
        break
    return shares


class CoreTable:
    """The shared table; made by the router, handed to each worker with the cell it owns."""

    def __init__(self, cores: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.cells: ctypes.Array[ctypes.c_int] = context.RawArray(ctypes.c_int, 2 * CELLS + 1)
        self.cells[0] = cores
        self._free = list(range(CELLS, 0, -1))

    def take_cell(self) -> int:
        """A cell for a new worker, or 0 (none) when every one is taken."""
        return self._free.pop() if self._free else 0

    def give_back(self, cell: int) -> None:
        if cell:
            self.cells[cell] = self.cells[CELLS + cell] = 0
            self._free.append(cell)

    def publish(self, cores: int) -> None:
        self.cells[0] = max(1, cores)

    def free(self) -> int:
        return int(self.cells[0])

    def threads_of(self, cell: int) -> int:
        """The threads the worker in `cell` decodes with now; 0 when it is idle."""
        return int(self.cells[CELLS + cell]) if cell and self.cells[cell] else 0


class WorkerCores:
    """One worker's view of the table: it says when it decodes, and asks for its share."""

    def __init__(self, cells: ctypes.Array[ctypes.c_int], cell: int) -> None:
        self._cells = cells
        self._cell = cell
        self.cap = 1

    @classmethod
    def alone(cls) -> WorkerCores:
        """For an engine outside the router (a benchmark): its cap, shared with nobody."""
        return cls((ctypes.c_int * 1)(), 0)

    def busy(self, cap: int) -> None:
        self.cap = cap
        if self._cell:
            self._cells[self._cell] = cap

    def idle(self) -> None:
        if self._cell:
            self._cells[self._cell] = 0

    def threads(self) -> int:
        if not self._cell:
            return self.cap
        cells = self._cells[: CELLS + 1]
        return thread_shares(cells[0], cells[1:])[self._cell - 1] or self.cap

    def applied(self, threads: int) -> None:
        if self._cell:
            self._cells[CELLS + self._cell] = threads
