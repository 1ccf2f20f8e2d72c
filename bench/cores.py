"""`make bench ARGS=cores`: several busy models on few cores, and a core taken by another program.

Aggregate tokens per second of one, two and three models generating at once (each model its
own worker, or its own llama-server instance), the same with a busy-looping process taking one
core, and single-stream speed on a tiny, a small and the Gemma model.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.measure import streaming_tokens_per_second

HOG = "while True: pass"
# The tiny test models' EOS, and Gemma's: banned so that every answer has the asked length.
EOS = {"tiny": [2], "gemma": [1, 106]}


def _banned(model: str) -> dict[str, int]:
    return {str(token): -100 for token in EOS["gemma" if model.startswith("gemma") else "tiny"]}


def _generate(url: str, model: str, tokens: int) -> int:
    body = {
        "model": model,
        "prompt": "Write a story.",
        "max_tokens": tokens,
        "temperature": 0,
        "logit_bias": _banned(model),
    }
    reply = requests.post(url + "/v1/completions", json=body, timeout=600)
    reply.raise_for_status()
    return int(reply.json()["usage"]["completion_tokens"])


def aggregate_tokens_per_second(url: str, models: list[str], tokens: int) -> float:
    """Every model generates `tokens` at the same time: all tokens over the wall time."""
    with ThreadPoolExecutor(len(models)) as pool:
        list(pool.map(lambda model: _generate(url, model, 4), models))  # loaded and warm
        started = time.perf_counter()
        total = sum(pool.map(lambda model: _generate(url, model, tokens), models))
    return total / (time.perf_counter() - started)


@contextlib.contextmanager
def core_taken() -> Iterator[None]:
    """Another program keeps one core busy (and the router has a moment to notice it)."""
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        time.sleep(2.5)
        yield
    finally:
        hog.kill()
        hog.wait()
        time.sleep(2.5)


def run(url: str, families: dict[str, list[str]], tokens: int) -> dict[str, float]:
    """`families`: e.g. {"slow": ["slow-a", "slow-b", "slow-c"], "gemma": [...]}."""
    result: dict[str, float] = {}
    for family, models in families.items():
        for count in (1, 2, 3):
            result[f"{family} x{count}"] = aggregate_tokens_per_second(url, models[:count], tokens)
        with core_taken():
            for count in (1, 2):
                busy = aggregate_tokens_per_second(url, models[:count], tokens)
                result[f"{family} x{count}, a core taken"] = busy
    for model in ("tiny-a", "slow-a", "gemma-a"):
        result[f"{model} single stream"] = streaming_tokens_per_second(
            url, model, tokens, EOS["gemma" if model.startswith("gemma") else "tiny"]
        )
    return result
