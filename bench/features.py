"""`make bench ARGS=features`: what each chat feature costs on the token hot path.

Gemma 270M chat streams of a fixed length (EOS banned), plain and with log-probabilities
(top 5), a grammar, and tools offered (so the answer goes through the tool-call reader); each
as tokens per second after the first token and as a ratio to plain, on llama-router and on
llama-server in turn.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

GEMMA_EOS = {"1": -100, "106": -100}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "logprobs": {"logprobs": True, "top_logprobs": 5},
    "grammar": {"grammar": "root ::= [a-z ,.]+"},
    "tools": {"tools": [TOOL]},
}


def tokens_per_second(url: str, model: str, tokens: int, extra: dict[str, Any]) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": tokens,
        "temperature": 0,
        "logit_bias": GEMMA_EOS,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    first = 0.0
    generated = 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            first = first or time.perf_counter()
            usage = json.loads(line[6:]).get("usage")
            if usage:
                generated = usage["completion_tokens"]
        ended = time.perf_counter()
    return (generated - 1) / (ended - first)


def measure(url: str, model: str, tokens: int) -> dict[str, float]:
    """One round: each variant's tokens per second, and its ratio to plain."""
    tokens_per_second(url, model, 8, {})  # loaded and warm
    speeds = {
        name: tokens_per_second(url, model, tokens, extra) for name, extra in VARIANTS.items()
    }
    ratios = {f"{name} / plain": speed / speeds["plain"] for name, speed in speeds.items()}
    del ratios["plain / plain"]
    return {**{f"{name} tok/s": speed for name, speed in speeds.items()}, **ratios}
