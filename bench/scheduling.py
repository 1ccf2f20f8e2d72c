"""Swap latency at --models-max 1, and a mixed load across three models at the same cap."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from bench.measure import completion, keep_alive_session, run_clients


def first_byte_seconds(url: str, model: str) -> float:
    body = completion(model, 4, stream=True)
    started = time.perf_counter()
    with keep_alive_session().post(
        url + "/v1/completions", json=body, stream=True, timeout=120
    ) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith(b"data: "):
                return time.perf_counter() - started
    raise RuntimeError("no event")


def swap_latency(url: str, models: tuple[str, str], rounds: int = 6) -> float:
    """Median time to first byte of a request whose model must replace the other one."""
    first_byte_seconds(url, models[0])
    times = [first_byte_seconds(url, models[(index + 1) % 2]) for index in range(rounds)]
    return statistics.median(times)


def mixed_load(url: str, models: list[str], clients: int, per_client: int) -> dict[str, Any]:
    served = 0
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        nonlocal served
        session = keep_alive_session()
        for step in range(per_client):
            model = models[(index + step) % len(models)]
            try:
                reply = session.post(
                    url + "/v1/completions", json=completion(model, 2), timeout=300
                )
                ok = reply.status_code == 200
                detail = reply.text[:200]
            except Exception as error:  # counted, not raised: the figure is the error count
                ok, detail = False, repr(error)
            with lock:
                if ok:
                    served += 1
                else:
                    errors.append(detail)

    seconds = run_clients(client, clients)
    return {
        "served": served,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": seconds,
    }
