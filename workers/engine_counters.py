"""A model worker's engine figures (llama-server's `/metrics`), in memory the router also maps.

The worker's decoder and request threads write them as they work; the router reads them when
`/metrics` is scraped, so a scrape costs the worker nothing and never waits for a busy one.
Each worker process has its own array, cleared by the router when the worker loads a model
(router/metrics.py keeps each model's totals across its workers).
"""

from __future__ import annotations

import ctypes
import enum
import multiprocessing
from typing import Any


class Figure(enum.IntEnum):
    # counters, summed over the model's lifetimes
    PROMPT_TOKENS = 0  # prompt tokens decoded, those found in a slot's cache excluded
    PROMPT_TOKENS_CACHED = 1
    PROMPT_SECONDS = 2
    PREDICTED_TOKENS = 3
    PREDICTED_SECONDS = 4
    DECODES = 5  # llama_decode calls
    BUSY_SLOTS = 6  # summed over decodes: slots with a request at each one
    # a maximum, kept over the model's lifetimes
    TOKENS_MAX = 7  # the longest sequence, prompt and generation
    # gauges of the live worker
    PROCESSING = 8  # requests in a slot
    DEFERRED = 9  # requests in the worker waiting for a slot


COUNTERS = (
    Figure.PROMPT_TOKENS,
    Figure.PROMPT_TOKENS_CACHED,
    Figure.PROMPT_SECONDS,
    Figure.PREDICTED_TOKENS,
    Figure.PREDICTED_SECONDS,
    Figure.DECODES,
    Figure.BUSY_SLOTS,
)


class EngineCounters:
    """One worker's figures. Made by the router (`EngineCounters()`), rebuilt in the worker
    from the shared array (`EngineCounters(cells)`)."""

    def __init__(self, cells: Any = None) -> None:
        if cells is None:
            cells = multiprocessing.get_context("spawn").RawArray(ctypes.c_double, len(Figure))
        self.cells: ctypes.Array[ctypes.c_double] = cells

    def add(self, figure: Figure, value: float) -> None:
        self.cells[figure] += value

    def set(self, figure: Figure, value: float) -> None:
        self.cells[figure] = value

    def raise_to(self, figure: Figure, value: float) -> None:
        if value > self.cells[figure]:
            self.cells[figure] = value

    def predicted(self, seconds: float) -> None:
        """One more token, `seconds` after the one before it (or after the prompt). Counted as
        it comes, so that a scrape during a long answer sees it grow."""
        self.cells[Figure.PREDICTED_TOKENS] += 1
        self.cells[Figure.PREDICTED_SECONDS] += seconds

    def add_prompt(self, timings: dict[str, float]) -> None:
        """A generation ended: its prompt's llama-server `timings` go into the counters."""
        self.add(Figure.PROMPT_TOKENS, timings["prompt_n"])
        self.add(Figure.PROMPT_TOKENS_CACHED, timings["cache_n"])
        self.add(Figure.PROMPT_SECONDS, timings["prompt_ms"] / 1e3)

    def clear(self) -> None:
        ctypes.memset(self.cells, 0, ctypes.sizeof(self.cells))

    def snapshot(self) -> list[float]:
        return list(self.cells)
