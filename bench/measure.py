"""What one benchmark run measures against one server."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

Body = dict[str, Any]


def completion(model: str, max_tokens: int = 1, **extra: Any) -> Body:
    return {"model": model, "prompt": "Hello", "max_tokens": max_tokens, "temperature": 0, **extra}


def keep_alive_session() -> requests.Session:
    """A session that resends a request whose idle keep-alive connection the server just closed
    (llama-server's HTTP library closes them after a few requests)."""
    session = requests.Session()
    retry = Retry(total=2, connect=2, read=2, status=0, other=0, allowed_methods=None)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def cold_load_seconds(url: str, model: str, settle: float = 0.0) -> float:
    """From a request to an unloaded model until its whole response has arrived, the server
    having been idle for `settle` seconds before."""
    time.sleep(settle)
    started = time.perf_counter()
    reply = requests.post(url + "/v1/completions", json=completion(model, 8), timeout=300)
    reply.raise_for_status()
    return time.perf_counter() - started


def warm_latencies(url: str, model: str, count: int) -> list[float]:
    session = keep_alive_session()
    session.post(url + "/v1/completions", json=completion(model), timeout=300).raise_for_status()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        session.post(url + "/v1/completions", json=completion(model), timeout=60).raise_for_status()
        latencies.append(time.perf_counter() - started)
    return latencies


def requests_per_second(url: str, models: list[str], clients: int, per_client: int) -> float:
    errors: list[BaseException] = []

    def client(index: int) -> None:
        session = keep_alive_session()
        model = models[index % len(models)]
        try:
            for _ in range(per_client):
                reply = session.post(url + "/v1/completions", json=completion(model), timeout=120)
                reply.raise_for_status()
        except BaseException as error:
            errors.append(error)

    for model in models:
        requests.post(
            url + "/v1/completions", json=completion(model), timeout=300
        ).raise_for_status()
    elapsed = run_clients(client, clients)
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]}")
    return clients * per_client / elapsed


def run_clients(client: Callable[[int], None], count: int) -> float:
    """Run `count` client threads at once; the seconds until the last one is done."""
    threads = [threading.Thread(target=client, args=(index,)) for index in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def streaming_tokens_per_second(url: str, model: str, tokens: int, eos: list[int]) -> float:
    """Streamed tokens per second after the first byte (EOS banned so the length is fixed)."""
    bias = {str(token): -100 for token in eos}
    body = completion(model, tokens, stream=True, logit_bias=bias, prompt="Write a story.")
    requests.post(
        url + "/v1/completions", json=completion(model, 4), timeout=300
    ).raise_for_status()
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=300) as reply:
        reply.raise_for_status()
        first: float | None = None
        events = 0
        for line in reply.iter_lines():
            if line.startswith(b"data: {"):
                events += 1
                first = first or time.perf_counter()
        ended = time.perf_counter()
    assert first is not None
    return (events - 1) / (ended - first)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def spread(values: list[float]) -> str:
    """Several runs' figure as `median (min-max)`."""
    if not values:
        return "-"
    low, median, high = map(_number, (min(values), statistics.median(values), max(values)))
    return f"{median} ({low}-{high})"


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
