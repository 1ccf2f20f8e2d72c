"""`GET /metrics`: every model's engine figures under llama-server's names, and the router's own.

Built on prometheus_client. Figures that change with every event (loads, evictions, waits,
latencies, downloads) are its counters and histograms, updated where they happen; figures that
are a state (models by status, requests waiting, sessions, each model's engine counters, read
from the memory its worker writes) are collected when the page is scraped, so keeping them
costs nothing between scrapes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from workers.engine_counters import COUNTERS, EngineCounters, Figure
from workers.ring import process_alive

if TYPE_CHECKING:
    from router.control.table import Model

disable_created_metrics()  # `_created` samples only double the page: nobody graphs them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Loads and queue waits are long; the router's own cost and token gaps are short.
_LONG = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SHORT = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TOKENS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# llama-server's engine figures: name, help, and where each comes from
_ENGINE_COUNTERS: tuple[tuple[str, str, Figure | None], ...] = (
    (
        "prompt_tokens_total",
        "Number of prompt tokens processed, excluding cached tokens",
        Figure.PROMPT_TOKENS,
    ),
    (
        "prompt_tokens_cached_total",
        "Number of prompt tokens reused from the cache",
        Figure.PROMPT_TOKENS_CACHED,
    ),
    ("prompt_seconds_total", "Total time spent processing prompts", Figure.PROMPT_SECONDS),
    ("tokens_predicted_total", "Number of generation tokens processed", Figure.PREDICTED_TOKENS),
    (
        "tokens_predicted_seconds_total",
        "Total time spent generating tokens",
        Figure.PREDICTED_SECONDS,
    ),
    ("n_decode_total", "Total number of llama_decode() calls", Figure.DECODES),
    (
        "n_tokens_max",
        "Largest observed sequence length (prompt + generation)",
        Figure.TOKENS_MAX,
    ),
    # no speculative decoding here: always 0, listed so that llama-server's dashboards work
    ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", None),
    (
        "spec_decode_num_accepted_tokens_total",
        "Speculative: Total draft tokens accepted by the target model",
        None,
    ),
    (
        "spec_decode_num_drafts_total",
        "Speculative: Total speculative decoding verification steps",
        None,
    ),
)


@dataclass(frozen=True)
class ModelView:
    """What a scrape needs of one model, read on the event loop."""

    model_id: str
    status: str
    figures: list[float]  # workers/engine_counters.py Figure order
    window: list[float]  # their growth since the previous scrape
    waiting: int  # requests in the router waiting for the model
    memory: int | None


class EngineTotals:
    """A model's figures over every worker that has served it, and the live one's."""

    def __init__(self) -> None:
        self._retired = [0.0] * len(Figure)
        self._looked = [0.0] * len(Figure)

    def retire(self, counters: EngineCounters) -> None:
        """The worker lets the model go: keep what it counted."""
        last = counters.snapshot()
        for figure in COUNTERS:
            self._retired[figure] += last[figure]
        self._retired[Figure.TOKENS_MAX] = max(
            self._retired[Figure.TOKENS_MAX], last[Figure.TOKENS_MAX]
        )

    def read(self, live: EngineCounters | None) -> list[float]:
        figures = list(self._retired)
        if live is not None:
            now = live.snapshot()
            for figure in COUNTERS:
                figures[figure] += now[figure]
            figures[Figure.TOKENS_MAX] = max(figures[Figure.TOKENS_MAX], now[Figure.TOKENS_MAX])
            figures[Figure.PROCESSING] = now[Figure.PROCESSING]
            figures[Figure.DEFERRED] = now[Figure.DEFERRED]
        return figures

    def window(self, figures: list[float]) -> list[float]:
        """How much the figures grew since the last call: llama-server's throughput gauges
        cover the time since the previous scrape."""
        grown = [now - before for now, before in zip(figures, self._looked, strict=True)]
        self._looked = list(figures)
        return grown


# prometheus_client's multiprocess mode: where every process writes its figures
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SHARED_DIR_PREFIX = "llama-router-metrics-"


def share_between_processes() -> str:
    """From now on this process, and the processes it starts, write their figures into files
    of one folder, which the page sums (prometheus_client's multiprocess mode)."""
    folder = _shared_dir(os.getpid())
    folder.mkdir(exist_ok=True)
    os.environ[SHARED_DIR_ENV] = str(folder)
    values.ValueClass = values.MultiProcessValue()
    return str(folder)


def remove_shared_dir() -> None:
    shutil.rmtree(_shared_dir(os.getpid()), ignore_errors=True)


def sweep_stale_shared_dirs() -> None:
    """The folders of figures of routers that died without removing theirs."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SHARED_DIR_PREFIX}*"):
        pid = folder.name.removeprefix(_SHARED_DIR_PREFIX)
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _shared_dir(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"{_SHARED_DIR_PREFIX}{pid}"


class RouterMetrics:
    """The router's counters and histograms; the scrape-time state comes from `views`. With a
    `shared_dir`, the counts of every HTTP process go into it and the page sums them."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self.started = int(time.time())  # llama-server's Process-Start-Time-Unix
        self.registry = CollectorRegistry(auto_describe=False)
        model = ["model"]
        registry: CollectorRegistry | None = self.registry
        if shared_dir is not None:
            MultiProcessCollector(self.registry, path=shared_dir)
            registry = None  # counted in the files, and read from there
        self.loads = Counter("llamarouter_model_loads", "Models loaded", model, registry=registry)
        self.load_failures = Counter(
            "llamarouter_model_load_failures", "Loads that failed", model, registry=registry
        )
        self.evictions = Counter(
            "llamarouter_model_evictions",
            "Models stopped to make room for another",
            model,
            registry=registry,
        )
        self.worker_deaths = Counter(
            "llamarouter_worker_deaths",
            "Model workers that exited when nobody asked them to",
            model,
            registry=registry,
        )
        self.load_seconds = Histogram(
            "llamarouter_model_load_seconds",
            "Time from a load's start to its model being ready",
            model,
            buckets=_LONG,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "llamarouter_queue_wait_seconds",
            "Time a request waited for its model (loading and queue included)",
            model,
            buckets=_LONG,
            registry=registry,
        )
        self.first_token = Histogram(
            "llamarouter_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first bytes",
            model,
            buckets=_LONG,
            registry=registry,
        )
        self.inter_token = Histogram(
            "llamarouter_inter_token_seconds",
            "Time between a stream's events as the router sent them",
            model,
            buckets=_TOKENS,
            registry=registry,
        )
        self.overhead = Histogram(
            "llamarouter_overhead_seconds",
            "Time the router itself added before a model's first byte (queue wait excluded)",
            model,
            buckets=_SHORT,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "llamarouter_http_request_duration_seconds",
            "HTTP requests by route and status class, until their last byte",
            ["route", "status"],
            buckets=_LONG,
            registry=registry,
        )
        self.download_bytes = Counter(
            "llamarouter_download_bytes", "Bytes of model files downloaded", registry=registry
        )

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def page(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """The figures read at scrape time: every model's engine figures with a `model` label,
    models by status, waiting requests, sessions, HTTP processes."""

    def __init__(
        self,
        models: Callable[[], list[ModelView]],
        sessions: Callable[[], tuple[int, int]],
        http_processes: Callable[[], int],
    ) -> None:
        self._models = models
        self._sessions = sessions
        self._http_processes = http_processes

    def collect(self) -> Iterator[Metric]:
        views = self._models()
        yield from engine_families(views)
        by_status = GaugeMetricFamily("llamarouter_models", "Models by status", labels=["status"])
        tally = Tally(view.status for view in views)
        for status in ("unloaded", "loading", "loaded", "sleeping", "failed"):
            by_status.add_metric([status], tally.get(status, 0))
        yield by_status
        waiting = GaugeMetricFamily(
            "llamarouter_requests_waiting",
            "Requests waiting in the router for their model to load or free a slot",
            labels=["model"],
        )
        memory = GaugeMetricFamily(
            "llamarouter_model_memory_bytes",
            "Resident bytes of each model's worker",
            labels=["model"],
        )
        for view in views:
            waiting.add_metric([view.model_id], view.waiting)
            if view.memory is not None:
                memory.add_metric([view.model_id], view.memory)
        yield waiting
        yield memory
        live, held = self._sessions()
        yield GaugeMetricFamily("llamarouter_sessions", "Resumable sessions held", value=live)
        yield GaugeMetricFamily(
            "llamarouter_session_bytes", "Bytes written into the sessions held", value=held
        )
        yield GaugeMetricFamily(
            "llamarouter_http_processes", "HTTP processes alive", value=self._http_processes()
        )


def engine_families(views: Iterable[ModelView]) -> Iterator[Metric]:
    """llama-server's `llamacpp:*` families, one sample per model with a `model` label."""
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for view in views:
        for name, help_text, kind, value in engine_figures(view):
            family = families.get(name)
            if family is None:
                # llama-server's n_tokens_max is a counter without `_total`, which this format
                # cannot hold: it is what it measures here, a gauge
                counter = kind == "counter" and name.endswith("_total")
                make = CounterMetricFamily if counter else GaugeMetricFamily
                family = families[name] = make(f"llamacpp:{name}", help_text, labels=["model"])
            family.add_metric([view.model_id], value)
    yield from families.values()


def engine_figures(view: ModelView) -> Iterator[tuple[str, str, str, float]]:
    """One model's figures as llama-server lists them: name, help, type and value."""
    for name, help_text, figure in _ENGINE_COUNTERS:
        yield name, help_text, "counter", 0.0 if figure is None else view.figures[figure]
    for name, help_text, reading in _ENGINE_GAUGES:
        yield name, help_text, "gauge", reading(view)


def one_model_page(view: ModelView) -> bytes:
    """`/metrics?model=X`: llama-server's own page for the model, line for line (written here,
    since its n_tokens_max, a counter without `_total`, is not what prometheus_client writes)."""
    lines = []
    for name, help_text, kind, value in engine_figures(view):
        lines += [
            f"# HELP llamacpp:{name} {help_text}",
            f"# TYPE llamacpp:{name} {kind}",
            f"llamacpp:{name} {value:g}",
        ]
    return ("\n".join(lines) + "\n").encode()


def _per(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def _prompt_rate(view: ModelView) -> float:
    return _per(view.window[Figure.PROMPT_TOKENS], view.window[Figure.PROMPT_SECONDS])


def _predict_rate(view: ModelView) -> float:
    return _per(view.window[Figure.PREDICTED_TOKENS], view.window[Figure.PREDICTED_SECONDS])


def _processing(view: ModelView) -> float:
    return view.figures[Figure.PROCESSING]


def _deferred(view: ModelView) -> float:
    # llama-server's: requests waiting for a slot; here also those waiting for the model itself
    return view.figures[Figure.DEFERRED] + view.waiting


def _busy(view: ModelView) -> float:
    return _per(view.figures[Figure.BUSY_SLOTS], max(view.figures[Figure.DECODES], 1.0))


_ENGINE_GAUGES = (
    ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", _prompt_rate),
    ("predicted_tokens_seconds", "Average generation throughput in tokens/s", _predict_rate),
    ("requests_processing", "Number of requests processing", _processing),
    ("requests_deferred", "Number of requests deferred", _deferred),
    ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call", _busy),
)


def model_view(model: Model) -> ModelView:
    worker = model.worker
    figures = model.engine.read(worker.counters if worker is not None else None)
    return ModelView(
        model.id,
        "failed" if model.failed and not model.status.running else model.public_status,
        figures,
        model.engine.window(figures),
        model.wanted,
        worker.resident_bytes() if worker is not None else None,
    )


@dataclass(eq=False)
class RequestClock:
    """An inference request's times, for its `Server-Timing` header and the histograms. The
    router's own cost is the time from its arrival to its send into the worker, less its wait
    for the model, plus the time from the worker's first byte to the router's response head."""

    metrics: RouterMetrics
    model: str
    arrived_ns: int
    waited: float = 0.0
    sent_ns: int = 0
    _last_ns: int = 0

    def sent(self, lease_waited: float, sent_ns: int) -> None:
        self.waited, self.sent_ns = lease_waited, sent_ns

    def server_timing(self, first_byte_ns: int) -> tuple[bytes, bytes]:
        """The response head is going out: the header that tells what the router added."""
        now = time.monotonic_ns()
        before = max(0, self.sent_ns - self.arrived_ns) / 1e9 - self.waited
        after = max(0, now - first_byte_ns) / 1e9 if first_byte_ns else 0.0
        cost = max(0.0, before) + after
        self.metrics.overhead.labels(self.model).observe(cost)
        timing = b"router;dur=%.3f, queue;dur=%.3f" % (cost * 1e3, self.waited * 1e3)
        return b"server-timing", timing

    def streaming(self) -> None:
        """A stream's first bytes go out: its time to first token."""
        now = time.monotonic_ns()
        self.metrics.first_token.labels(self.model).observe((now - self.arrived_ns) / 1e9)
        self._last_ns = 0  # the first bytes end the first token's wait, not a gap between tokens

    def relayed(self, data: bytes) -> None:
        """Stream bytes went out: the gap since the last ones, shared by the events they hold."""
        now = time.monotonic_ns()
        events = data.count(b"\n\n")
        if self._last_ns and events:
            gap = (now - self._last_ns) / 1e9 / events
            between = self.metrics.inter_token.labels(self.model)
            for _ in range(events):
                between.observe(gap)
        self._last_ns = now
