"""`make bench ARGS=slots`: concurrent streams on one model, and a second turn's first token.

Aggregate tokens per second of 1, 2, 4 and 8 concurrent greedy Gemma streams at `-np 4`, and of
4 drawn at temperature 0.8; the time to the first token of a second chat turn whose first turn
(about 770 tokens) is cached; and the same after the model was swapped out for another and back
(`--models-max 1`), against the first turn of a cold model, for that first turn and for a long
one (about 2,800 tokens). Loading Gemma takes about 0.35 s of llama.cpp's own work, a floor
under every swap-back, so the shorter the first turn, the less of it the swap-back can save.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

SAMPLED_TEMPERATURE = 0.8  # llama-server's default
GEMMA_EOS = {"1": -100, "106": -100}
# About 770 Gemma tokens of a first turn, with the chat template.
FIRST_TURN = " ".join(f"Point {n}: the quick brown fox jumps over the lazy dog." for n in range(50))
LONG_FIRST_TURN = " ".join(
    f"Point {n}: the quick brown fox jumps over the lazy dog." for n in range(180)
)


def _stream_tokens(url: str, model: str, tokens: int, index: int, temperature: float = 0.0) -> int:
    body = {
        "model": model,
        "prompt": f"Story number {index}:",
        "max_tokens": tokens,
        "temperature": temperature,
        "logit_bias": GEMMA_EOS,
        "stream": True,
    }
    count = 0
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith(b"data: {") and b'"text":""' not in line:
                count += 1
    return count


def concurrent_tokens_per_second(
    url: str, model: str, streams: int, tokens: int, temperature: float = 0.0
) -> float:
    def stream(index: int) -> int:
        return _stream_tokens(url, model, tokens, index, temperature)

    with ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        total = sum(pool.map(stream, range(streams)))
    return total / (time.perf_counter() - started)


def _first_token_seconds(url: str, body: dict[str, Any]) -> tuple[float, str]:
    """Seconds to the first streamed content, and the whole answer."""
    started = time.perf_counter()
    first = 0.0
    text = []
    with requests.post(
        url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=600
    ) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if b'"content":"' in line:
                first = first or time.perf_counter() - started
                text.append(line.decode())
    return first, "".join(text)


def second_turn_first_token(url: str, model: str) -> dict[str, float]:
    """A fresh conversation each call (its first words differ), so nothing of it is cached."""
    opening = f"{time.time_ns()} {FIRST_TURN}"
    first_turn = [{"role": "user", "content": opening}]
    body = {"model": model, "messages": first_turn, "max_tokens": 16, "temperature": 0}
    cold, _ = _first_token_seconds(url, body)
    answer = requests.post(url + "/v1/chat/completions", json=body, timeout=600).json()
    second = [
        *first_turn,
        {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Summarise that in one line."},
    ]
    warm, _ = _first_token_seconds(url, {**body, "messages": second})
    return {"first_turn_first_token_s": cold, "second_turn_first_token_s": warm}


def _unload(url: str, model: str) -> None:
    requests.post(url + "/models/unload", json={"model": model}, timeout=60)
    while True:
        listed = requests.get(url + "/models", timeout=60).json()["data"]
        status = next(entry["status"]["value"] for entry in listed if entry["id"] == model)
        if status == "unloaded":
            return
        time.sleep(0.05)


def swap_back_first_token(
    url: str, model: str, other: str, opening: str, length: str
) -> dict[str, float]:
    """First turn on a cold model; `other` takes its place; the second turn brings it back."""
    first_turn = [{"role": "user", "content": f"{time.time_ns()} {opening}"}]
    body = {"model": model, "messages": first_turn, "max_tokens": 16, "temperature": 0}
    _unload(url, model)
    cold, _ = _first_token_seconds(url, body)
    answer = requests.post(url + "/v1/chat/completions", json=body, timeout=600).json()
    requests.post(
        url + "/v1/completions", json={"model": other, "prompt": "x", "max_tokens": 1}, timeout=600
    ).raise_for_status()
    second = [
        *first_turn,
        {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Summarise that in one line."},
    ]
    back, _ = _first_token_seconds(url, {**body, "messages": second})
    return {
        f"first turn tokens, {length}": answer["usage"]["prompt_tokens"],
        f"cold first token s, {length}": cold,
        f"swapped back first token s, {length}": back,
        f"swapped back / cold, {length}": back / cold,
    }


def run(url: str, model: str, tokens: int, other: str) -> dict[str, float]:
    _stream_tokens(url, model, 4, 0)  # loaded
    result = {
        f"{streams} streams tok/s": concurrent_tokens_per_second(url, model, streams, tokens)
        for streams in (1, 2, 4, 8)
    }
    # greedy above (the chain's choice read off the logits); here every token is drawn, with
    # llama.cpp's whole sampler chain on both servers
    result["4 streams tok/s, temperature 0.8"] = concurrent_tokens_per_second(
        url, model, 4, tokens, SAMPLED_TEMPERATURE
    )
    result.update(second_turn_first_token(url, model))
    for opening, length in ((FIRST_TURN, "short"), (LONG_FIRST_TURN, "long")):
        result.update(swap_back_first_token(url, model, other, opening, length))
    return result
