"""Turn a request body into llama-cpp-python generation arguments, llama-server style.

Precedence: the request's own fields, then the model's settings (command line and presets), then
llama-server's defaults.
"""

from __future__ import annotations

from typing import Any

from workers.errors import ApiError
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


def completion_kwargs(request: dict[str, Any], settings: ModelSettings) -> dict[str, Any]:
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
        kwargs["logit_bias"] = logit_bias(request["logit_bias"])
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


def logit_bias(value: Any) -> dict[int, float]:
    """OpenAI's {"token": bias} or llama-server's [[token, bias]]; `false` bans the token."""
    pairs = value.items() if isinstance(value, dict) else value
    bias: dict[int, float] = {}
    try:
        for token, amount in pairs:
            bias[int(token)] = -1e30 if amount is False else float(amount)
    except (TypeError, ValueError) as error:
        raise ApiError(400, f"invalid logit_bias: {error}") from error
    return bias
