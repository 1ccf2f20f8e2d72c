"""Download throughput from a local fake hub, against a plain requests loop, and router CPU."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.targets import Target
from tests.fakehub import FakeHub

REPO = "bench/big-GGUF"
FILE = "big-Q4_K_M.gguf"


def plain_loop(hub: FakeHub, into: Path) -> float:
    """MB/s of the simplest client: requests in 1 MiB pieces straight to a file."""
    started = time.perf_counter()
    size = 0
    address = f"{hub.url}/{REPO}/resolve/main/{FILE}"
    with requests.get(address, stream=True, timeout=60) as reply, open(into, "wb") as out:
        for chunk in reply.iter_content(1 << 20):
            out.write(chunk)
            size += len(chunk)
    return size / (time.perf_counter() - started) / 1e6


def through_router(target: Target, log_dir: Path) -> dict[str, Any]:
    target.start(log_dir)
    try:
        router = psutil.Process(target.process.pid if target.process else 0)
        cpu_before = sum(router.cpu_times()[:2])
        started = time.perf_counter()
        requests.post(target.url + "/models", json={"model": f"{REPO}:Q4_K_M"}, timeout=60)
        model_id = f"{REPO}:Q4_K_M"
        while True:
            entries = {
                e["id"]: e for e in requests.get(target.url + "/models", timeout=10).json()["data"]
            }
            if entries.get(model_id, {}).get("status", {}).get("value") == "unloaded":
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = sum(router.cpu_times()[:2]) - cpu_before
        return {"seconds": elapsed, "router_cpu_share": cpu / elapsed}
    finally:
        target.stop()


def run(make_target: Any, work: Path, megabytes: int, rounds: int = 3) -> dict[str, Any]:
    """Rounds alternate between the plain loop and the router; medians are reported."""
    hub = FakeHub()
    data = os.urandom(megabytes << 20)
    hub.add(REPO, FILE, data)
    os.environ["HF_ENDPOINT"] = hub.url
    plain: list[float] = []
    routed: list[dict[str, Any]] = []
    try:
        for round_ in range(rounds):
            plain.append(plain_loop(hub, work / "plain.bin"))
            cache = work / f"download-cache-{round_}"
            routed.append(through_router(make_target(cache), work))
    finally:
        hub.close()
    seconds = statistics.median(r["seconds"] for r in routed)
    return {
        "megabytes": megabytes,
        "plain_requests_mb_per_s": statistics.median(plain),
        "llama-router_mb_per_s": len(data) / seconds / 1e6,
        "router_cpu_share": statistics.median(r["router_cpu_share"] for r in routed),
    }
