"""Turn a request body into llama-cpp-python generation arguments, llama-server style.

Precedence: the request's own fields, then the model's settings (command line and presets), then
llama-server's defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from workers.protocol import ModelSettings

# generation argument -> llama-server default
DEFAULTS: dict[str, float] = {
    "temp": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

# What `false` as a bias means: the token is never sampled.
BANNED = -1e30
# An object key that names a token id rather than text to tokenize (as strtol reads it).
_TOKEN_ID = re.compile(r"\s*[+-]?\d+")

# Settings keys (llama-server flag names) for each generation argument.
_SETTING_KEYS = {
    "temp": "temp",
    "top_k": "top-k",
    "top_p": "top-p",
    "min_p": "min-p",
    "typical_p": "typical",
    "repeat_penalty": "repeat-penalty",
    "presence_penalty": "presence-penalty",
    "frequency_penalty": "frequency-penalty",
}


def completion_kwargs(
    request: dict[str, Any], settings: ModelSettings, tokenize: Callable[[str], list[int]]
) -> dict[str, Any]:
    """`tokenize` turns logit_bias strings into tokens."""
    kwargs: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        value = request.get("temperature" if name == "temp" else name)
        if name == "temp" and value is None:
            value = request.get("temp")
        if value is None:
            value = settings.sampling.get(_SETTING_KEYS[name], default)
        kwargs[name] = int(value) if name == "top_k" else float(value)
    kwargs["max_tokens"] = _max_tokens(request, settings)
    seed = request.get("seed")
    if seed is None and settings.seed >= 0:
        seed = settings.seed
    if seed is not None and seed >= 0:
        kwargs["seed"] = seed
    kwargs["stop"] = stop_list(request.get("stop"))
    if request.get("logit_bias"):
        kwargs["logit_bias"] = logit_bias(request["logit_bias"], tokenize)
    kwargs["cache_prompt"] = request.get("cache_prompt") is not False
    kwargs["model"] = request.get("model") or settings.model_id
    return kwargs


def stop_list(value: str | list[str] | None) -> list[str]:
    """`stop` as a string, a list or nothing: always a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _max_tokens(request: dict[str, Any], settings: ModelSettings) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "n_predict"):
        value = request.get(key)
        if value is not None:
            return None if value < 0 else value
    return None if settings.n_predict < 0 else settings.n_predict


def logit_bias(value: Any, tokenize: Callable[[str], list[int]]) -> dict[int, float]:
    """OpenAI's {"token": bias} or llama-server's [[token, bias]], where a token is an id or a
    string whose every token gets the bias, and `false` bans. As llama-server does, entries of
    another shape are skipped and biases given twice to one token add up."""
    pairs = value.items() if isinstance(value, dict) else value
    bias: dict[int, float] = {}
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        token, amount = pair
        if amount is False:
            amount = BANNED
        elif isinstance(amount, bool) or not isinstance(amount, (int, float)):
            continue
        if isinstance(value, dict) and _TOKEN_ID.fullmatch(token):
            token = int(token)
        if isinstance(token, str):
            tokens = tokenize(token)
        elif isinstance(token, int) and not isinstance(token, bool):
            tokens = [token]
        else:
            continue
        for one in tokens:
            bias[one] = bias.get(one, 0.0) + float(amount)
    return bias
