"""LLAMA_SERVER_DEBUG_FAKE_TIMING, the hook llama.cpp's router tests rely on: each model load
starts 2 s late, and each request counts as in flight for 2 s before it is sent, so a quick
request keeps its model busy long enough for a test to queue another model behind it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.test_scheduling import Call

FAKE_TIMING = {"LLAMA_SERVER_DEBUG_FAKE_TIMING": "1"}


def test_a_quick_request_holds_its_model_busy_and_loads_start_late(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1", env=FAKE_TIMING)
    started = time.monotonic()
    assert server.post("/models/load", {"model": "tiny-a"}).status_code == 200
    assert time.monotonic() - started >= 2.0  # the load waited before it began
    server.wait_status("tiny-a", "loaded")

    busy = Call(server, {"model": "tiny-a", "prompt": "x", "max_tokens": 1})
    time.sleep(0.5)
    queued = Call(server, {"model": "tiny-b", "prompt": "x", "max_tokens": 1})
    time.sleep(0.5)
    assert server.status("tiny-a") == "loaded"  # busy for 2 s: not evicted for tiny-b yet
    assert busy.result() == 200 and queued.result() == 200
    assert busy.finished_at - started >= 2.0
    # tiny-b: a late load start, then its own 2 s in flight, after tiny-a's 2 s
    assert queued.finished_at - busy.finished_at >= 2.0
    assert server.status("tiny-a") == "unloaded"


def test_without_the_variable_nothing_waits(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    server.post("/models/load", {"model": "tiny-a"})
    server.wait_status("tiny-a", "loaded")
    started = time.monotonic()
    assert Call(server, {"model": "tiny-a", "prompt": "x", "max_tokens": 1}).result() == 200
    assert time.monotonic() - started < 1.5
