"""Resumable streams: replay throughput, live-tail latency, and live-tail readers per process."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import requests

from bench.measure import completion


def make_session(url: str, conversation: str, model: str, tokens: int) -> int:
    """Generate a finished session; returns its size in bytes."""
    body = completion(model, tokens, stream=True, logit_bias={"2": -100})
    headers = {"X-Conversation-Id": conversation}
    reply = requests.post(url + "/v1/completions", json=body, headers=headers, timeout=600)
    reply.raise_for_status()
    return len(reply.content)


def replay_throughput(url: str, conversation: str, seconds: float = 5.0) -> dict[str, float]:
    session = requests.Session()
    replays = 0
    size = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        reply = session.get(url + f"/v1/stream?conv_id={conversation}", timeout=60)
        reply.raise_for_status()
        size = len(reply.content)
        replays += 1
    elapsed = time.perf_counter() - started
    return {
        "bytes": size,
        "replays_per_s": replays / elapsed,
        "mb_per_s": replays * size / elapsed / 1e6,
    }


async def _read_events(
    url: str, path: str, arrivals: dict[int, float], body: bytes | None = None
) -> None:
    """Record when each event (by its `id:`) arrives, over a raw HTTP/1.1 connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head += "X-Conversation-Id: tail\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    await writer.drain()
    async for line in reader:
        if line.startswith(b"id: "):
            arrivals[int(line[4:])] = time.perf_counter()
    writer.close()


def live_tail(url: str, model: str, tokens: int, readers: int) -> dict[str, Any]:
    """One session followed by its POST client and `readers` live tails started right after."""
    body = json.dumps(completion(model, tokens, stream=True, logit_bias={"2": -100})).encode()
    original: dict[int, float] = {}
    tails: list[dict[int, float]] = [{} for _ in range(readers)]

    tails_started = 0.0

    async def run() -> None:
        nonlocal tails_started
        first = asyncio.create_task(_read_events(url, "/v1/completions", original, body))
        while not original:
            await asyncio.sleep(0.01)
        tails_started = time.perf_counter()
        followers = [_read_events(url, "/v1/stream?conv_id=tail", arrivals) for arrivals in tails]
        await asyncio.gather(first, *followers)

    asyncio.run(run())
    settle = tails_started + 0.5  # events after every tail has caught up with the replay
    delays = [
        arrivals[event] - original[event]
        for arrivals in tails
        for event in arrivals
        if event in original and original[event] > settle
    ]
    late = sum(1 for delay in delays if delay > 0.05)
    return {
        "readers": readers,
        "events": len(delays),
        "median_added_ms": 1000 * statistics.median(delays) if delays else None,
        "late_fraction": late / len(delays) if delays else None,
    }


def readers_capacity(url: str, model: str, tokens: int, steps: list[int]) -> list[dict[str, Any]]:
    results = []
    for readers in steps:
        result = live_tail(url, model, tokens, readers)
        results.append(result)
        if result["late_fraction"] is None or result["late_fraction"] >= 0.05:
            break
    return results
