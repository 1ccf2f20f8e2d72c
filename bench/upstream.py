"""`make bench ARGS=upstream`: what a hop through llama-router costs a model served elsewhere.

The upstream is llama-server serving `tiny-0` when it is built (else another llama-router on the
tiny models); llama-router lists that model as an upstream model. The same short completion is timed
straight against the upstream and through the router, at 1 and at 16 clients, each client on
its own keep-alive connection, the two alternating `--runs` times. The router's cost is the
difference of the medians of their p50 (and p99).

Twice: with every process sharing all the cores, and with the upstream alone on one core
(`-t 1`) while the router and the clients share the others, as when the upstream is another
machine. Sharing, each request's CPU time in the router is taken from the upstream itself, so
at 16 clients, where the upstream is never idle, the queue of 16 pays it 16 times over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench.http_workers import Client, timed_completions
from bench.measure import spread, summary
from bench.targets import Target

MODEL = "tiny-0"
CLIENT_COUNTS = (1, 16)
TARGET_ADDED_P50_MS = 2.0


async def latencies(url: str, model: str, clients: int, count: int) -> list[float]:
    """Seconds per request of `clients` connections sending `count` requests each in turn."""

    async def client() -> list[float]:
        """llama-server closes a kept-alive connection after 100 requests: open another then,
        and count only whole requests; a connection that answered none is an error."""
        times: list[float] = []
        while len(times) < count:
            before = len(times)
            connection = await Client.open(url)
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await timed_completions(connection, model, count - len(times), times)
            connection.close()
            if len(times) == before:
                raise RuntimeError(f"{url} closed a connection before answering on it")
        return times

    return [t for times in await asyncio.gather(*(client() for _ in range(clients))) for t in times]


def measure(url: str, model: str, count: int) -> dict[str, float]:
    result = {}
    for clients in CLIENT_COUNTS:
        per_client = count if clients == 1 else max(10, count // 4)
        figures = summary(asyncio.run(latencies(url, model, clients, per_client)))
        result[f"p50 ms, {clients} clients"] = figures["p50_ms"]
        result[f"p99 ms, {clients} clients"] = figures["p99_ms"]
    return result


class Placement(NamedTuple):
    name: str
    upstream_cpus: frozenset[int] | None
    router_cpus: frozenset[int] | None
    upstream_flags: list[str]


def placements() -> list[Placement]:
    cpus = sorted(os.sched_getaffinity(0))
    shared = Placement("sharing every core", None, None, [])
    if len(cpus) < 2:
        return [shared]
    alone = frozenset(cpus[-1:])
    return [shared, Placement("upstream alone on a core", alone, frozenset(cpus[:-1]), ["-t", "1"])]


def run(
    make_upstream: Callable[[list[str]], Target],
    make_front: Callable[[Path], Target],
    work: Path,
    runs: int,
    count: int,
) -> dict[str, Any]:
    results = {}
    for placement in placements():
        upstream = make_upstream(placement.upstream_flags)
        upstream = dataclasses.replace(
            upstream, name=f"upstream-{upstream.name}", cpus=placement.upstream_cpus
        )
        preset = work / "upstream.ini"
        preset.write_text(f"[remote]\nupstream = {upstream.url}/v1\nupstream-model = {MODEL}\n")
        front = dataclasses.replace(
            make_front(preset), name="llama-router-upstream-front", cpus=placement.router_cpus
        )
        figures: dict[str, list[dict[str, float]]] = {"direct": [], "through the router": []}
        own_cpus = os.sched_getaffinity(0)
        try:
            upstream.start(work)
            front.start(work)
            if placement.router_cpus is not None:
                os.sched_setaffinity(0, placement.router_cpus)  # the clients, beside the router
            for _ in range(runs):
                figures["direct"].append(measure(upstream.url, MODEL, count))
                figures["through the router"].append(measure(front.url, "remote", count))
        finally:
            os.sched_setaffinity(0, own_cpus)
            front.stop()
            upstream.stop()
        results[placement.name] = report(f"{upstream.name}, {placement.name}", figures, runs)
    return results


def report(upstream: str, figures: dict[str, list[dict[str, float]]], runs: int) -> dict[str, Any]:
    print(f"\nan upstream hop ({upstream}, tiny model): median of {runs} runs (min-max)")
    keys = list(figures["direct"][0])
    print(f"{'measure':22}{'direct':>20}{'through the router':>22}{'added':>10}")
    added: dict[str, float] = {}
    for key in keys:
        direct = [one[key] for one in figures["direct"]]
        routed = [one[key] for one in figures["through the router"]]
        added[key] = statistics.median(routed) - statistics.median(direct)
        print(f"{key:22}{spread(direct):>20}{spread(routed):>22}{added[key]:>10.2f}")
    for clients in CLIENT_COUNTS:
        value = added[f"p50 ms, {clients} clients"]
        verdict = "met" if value < TARGET_ADDED_P50_MS else "MISSED"
        aim = f"aim < {TARGET_ADDED_P50_MS}"
        print(f"added p50 at {clients} clients: {value:.2f} ms ({aim}) {verdict}")
    return {**figures, "added_ms": added}
