"""Parallel slots: one worker decodes several requests together and reuses cached prompts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import RouterProcess
from tests.tinymodels import EOS_TOKEN

NO_EOS = {str(EOS_TOKEN): -100}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RouterProcess]:
    """Four slots (llama-server's automatic number), a small answer buffer so that a reader
    that stops reading fills its ring soon."""
    cache = tmp_path_factory.mktemp("slots-cache")
    flags = ["--models-dir", str(models_dir), "--response-buffer-bytes", "16384"]
    server = RouterProcess(flags, cache).wait_ready()
    yield server
    server.stop_and_check()


def complete(server: RouterProcess, model: str, tokens: int, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "x", "max_tokens": tokens, "logit_bias": NO_EOS, **extra}
    reply = server.post("/v1/completions", body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def timed(server: RouterProcess, model: str, tokens: int) -> float:
    started = time.monotonic()
    complete(server, model, tokens)
    return time.monotonic() - started


def test_requests_to_one_model_are_decoded_together(server: RouterProcess) -> None:
    timed(server, "slow", 2)  # loaded
    alone = timed(server, "slow", 300)
    processing: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            listed = server.get("/slots", params={"model": "slow"}).json()
            processing.append(sum(slot["is_processing"] for slot in listed))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: complete(server, "slow", 300), range(4)))
    together = time.monotonic() - started
    done.set()
    watcher.join()
    assert len(server.get("/slots", params={"model": "slow"}).json()) == 4
    assert max(processing) == 4
    assert together < 3.2 * alone, (together, alone)  # one at a time would take 4 times as long


def test_a_second_turn_decodes_only_what_is_new(server: RouterProcess) -> None:
    first_turn = [{"role": "user", "content": "tell me a story " * 40}]
    body = {"model": "tiny-b", "messages": first_turn, "max_tokens": 8, "temperature": 0}
    first = server.post("/v1/chat/completions", body).json()
    answer = first["choices"][0]["message"]["content"]
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and then?"},
    ]
    second = server.post("/v1/chat/completions", {**body, "messages": second_turn}).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"]  # the first turn is not decoded again
    assert second["timings"]["cache_n"] == cached
    assert second["timings"]["prompt_n"] == second["usage"]["prompt_tokens"] - cached
    again = server.post(
        "/v1/chat/completions", {**body, "messages": second_turn, "cache_prompt": False}
    ).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["choices"][0]["message"] == second["choices"][0]["message"]  # same greedy text


def test_a_reader_that_stops_reading_does_not_stall_the_others(server: RouterProcess) -> None:
    complete(server, "tiny-c", 2)
    body = {"model": "tiny-c", "prompt": "x", "max_tokens": 4000, "logit_bias": NO_EOS}
    with requests.post(
        server.url + "/v1/completions", json={**body, "stream": True}, stream=True, timeout=60
    ) as stalled:
        lines = stalled.iter_lines()
        assert next(lines)  # then nothing more is read: its ring and socket fill up
        time.sleep(1.0)
        started = time.monotonic()
        for _ in range(3):
            assert complete(server, "tiny-c", 200)["usage"]["completion_tokens"] == 200
        assert time.monotonic() - started < 10
        listed = server.get("/slots", params={"model": "tiny-c"}).json()
        assert listed[0]["is_processing"]  # the stalled one still holds its slot


def test_one_request_ends_or_fails_alone(server: RouterProcess) -> None:
    complete(server, "tiny-a", 2)
    results: dict[str, Any] = {}

    def long_one() -> None:
        results["long"] = complete(server, "tiny-a", 1500)

    runner = threading.Thread(target=long_one)
    runner.start()
    body = {"model": "tiny-a", "prompt": "x", "max_tokens": 3000, "stream": True}
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as left:
        assert next(left.iter_lines())  # then its client leaves
    unparsable = {"model": "tiny-a", "prompt": "x", "grammar": 'root ::= "a'}
    bad = server.post("/v1/completions", unparsable)
    assert bad.status_code == 400
    invalid = server.post("/v1/completions", {"model": "tiny-a", "prompt": [99999]})
    assert invalid.status_code == 400
    runner.join(60)
    assert results["long"]["usage"]["completion_tokens"] == 1500
    assert results["long"]["choices"][0]["finish_reason"] == "length"
