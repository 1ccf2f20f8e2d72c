"""`make bench ARGS=redis-sessions`: what a live tail through Redis on another replica adds.

Two routers (`--sessions-redis` on one local redis-server), `--runs` times: a streamed session is
started on replica A, and followed at once by a reader on A (from the ring in shared memory) and
a reader on replica B (from Redis: XREAD BLOCK). Per event, B's arrival minus A's reader's: its
p50 and p90 over the live events (after both readers caught up), and each reader's delay after
the POST client. Aim: p50 under 5 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench import streams
from bench.http_workers import TAIL_PATH, start_tail_session
from bench.measure import percentile, spread
from bench.targets import Target
from tests.redis_server import RedisServer

TOKENS = 1000  # a few seconds of events on the slow model
AIM_MS = 5.0


async def measure_one(owner: str, other: str) -> dict[str, float]:
    local: dict[int, float] = {}
    remote: dict[int, float] = {}
    post, original = await start_tail_session(owner, TOKENS)
    await asyncio.to_thread(_wait_listed, other)
    await asyncio.gather(
        post,
        streams._read_events(owner, TAIL_PATH, local),
        streams._read_events(other, TAIL_PATH, remote),
    )
    if not remote:
        raise RuntimeError(f"replica B followed nothing of the session: {len(local)} events on A")
    ids = sorted(original)
    live = ids[len(ids) // 4 :]  # both readers have long caught up with the replay
    added = sorted(1000 * (remote[event] - local[event]) for event in live if event in remote)
    return {
        "events": len(live),
        "remote - local p50 ms": statistics.median(added),
        "remote - local p90 ms": percentile(added, 0.9),
        "local after client p50 ms": 1000
        * statistics.median(local[event] - original[event] for event in live),
        "remote after client p50 ms": 1000
        * statistics.median(remote[event] - original[event] for event in live if event in remote),
    }


def _wait_listed(url: str) -> None:
    """Until the other replica can follow the session (its copy trails the ring a little)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with requests.get(url + TAIL_PATH, stream=True, timeout=10) as reply:
            if reply.ok:
                return
        time.sleep(0.01)
    raise RuntimeError("the session never reached Redis")


def run(make_target: Callable[[list[str]], Target], work: Path, runs: int) -> dict[str, Any]:
    redis_server = RedisServer(work / "redis").start()
    figures: list[dict[str, float]] = []
    try:
        for _ in range(runs):
            flags = ["--sessions-redis", redis_server.url]
            owner, other = make_target(flags), make_target(flags)
            owner.name, other.name = "llama-router-replica-a", "llama-router-replica-b"
            try:
                owner.start(work)
                other.start(work)
                figures.append(asyncio.run(measure_one(owner.url, other.url)))
            finally:
                owner.stop()
                other.stop()
    finally:
        redis_server.kill()
    print(f"\nlive tail through Redis on another replica: median of {runs} runs (min-max)")
    for key in figures[0]:
        print(f"{key:34} {spread([one[key] for one in figures]):>24}")
    p50 = statistics.median(one["remote - local p50 ms"] for one in figures)
    verdict = "met" if p50 < AIM_MS else "MISSED"
    print(f"{'added per event p50 (aim < 5 ms)':34} {p50:10.3g} {verdict}")
    return {"runs": figures, "added_p50_ms": p50}
