"""Soak: many clients, streamed and not, three models at --models-max 2, clients that vanish,
and a worker killed every few seconds. `make test` runs a short version; `make soak` the long one.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests

SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "24"))
MODELS = ["tiny-a", "tiny-b", "tiny-c"]
REQUEST_TIMEOUT = 60.0


def error_kind(reply: requests.Response) -> str:
    """`error STATUS: message` with names and numbers folded, or `malformed`."""
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        return "malformed"
    if error.get("code") != reply.status_code or not isinstance(error.get("message"), str):
        return "malformed"
    return f"error {reply.status_code}: {folded(error['message'])}"


def folded(message: str) -> str:
    return re.sub(r"[\d.]+", "N", re.sub(r"model( name=)? ?\S+", "model M", message))


def one_request(url: str, rng: random.Random, outcomes: Counter, latencies: list[float]) -> None:
    model = rng.choice(MODELS)
    stream = rng.random() < 0.5
    body = {"model": model, "prompt": "soak", "max_tokens": rng.randint(2, 40), "stream": stream}
    vanish = rng.random() < 0.15
    started = time.monotonic()
    try:
        reply = requests.post(
            url + "/v1/completions", json=body, stream=stream, timeout=REQUEST_TIMEOUT
        )
        if vanish:
            reply.close()
            outcomes["vanished"] += 1
            return
        if reply.status_code != 200:
            outcomes[error_kind(reply)] += 1
            return
        if not stream:
            outcomes["ok" if reply.json()["choices"] else "malformed"] += 1
            return
        events = [line for line in reply.iter_lines() if line.startswith(b"data: ")]
        if events and events[-1] == b"data: [DONE]":
            outcomes["ok"] += 1
        elif events and "error" in (last := json.loads(events[-1][6:])):
            outcomes[f"stream error: {folded(last['error']['message'])}"] += 1
        else:
            outcomes["malformed"] += 1
    except requests.Timeout:
        outcomes["hung"] += 1
    except requests.RequestException as error:
        outcomes[f"connection {type(error).__name__}"] += 1
    finally:
        latencies.append(time.monotonic() - started)


@pytest.mark.timeout(SECONDS * 4 + 120)
def test_soak(router, models_dir: Path) -> None:
    # a client waits at most 2 x --timeout for its first byte (the model, then the worker):
    # below the clients' own timeout
    server = router("--models-dir", str(models_dir), "--models-max", "2", "--timeout", "25")
    router_process = psutil.Process(server.proc.pid)
    for model in MODELS:
        assert server.post("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2}).ok
    outcomes: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    latencies: list[float] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            mine: Counter = Counter()
            one_request(server.url, rng, mine, latencies)
            with lock:
                outcomes.update(mine)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    kills = 0
    time.sleep(SECONDS / 4)  # warm-up: every client connected, every model seen
    warm_rss = router_process.memory_info().rss
    while time.monotonic() < deadline:
        time.sleep(min(SECONDS / 4, 10))
        loaded = [e for e in server.get("/models").json()["data"] if "pid" in e]
        if loaded:
            os.kill(random.choice(loaded)["pid"], signal.SIGKILL)
            kills += 1
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 30)
    end_rss = router_process.memory_info().rss
    ordered = sorted(latencies)
    p99 = round(ordered[int(0.99 * (len(ordered) - 1))], 2)
    report = dict(outcomes, kills=kills, p99_s=p99, warm_rss=warm_rss, end_rss=end_rss)
    print("soak:", report)
    assert outcomes["ok"] > 0, report
    assert outcomes["malformed"] == 0 and outcomes["hung"] == 0, report
    assert not any(key.startswith("connection") for key in outcomes), report
    assert end_rss <= warm_rss * 1.10, report
