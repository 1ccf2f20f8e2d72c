"""Router settings, and the llama-server flag vocabulary shared by the command line and presets."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from workers.protocol import ModelSettings

# Short names, alternative spellings and env-name stems, each mapped to its canonical flag name.
FLAG_ALIASES = {
    "c": "ctx-size",
    "t": "threads",
    "tb": "threads-batch",
    "b": "batch-size",
    "batch": "batch-size",
    "ub": "ubatch-size",
    "ubatch": "ubatch-size",
    "ngl": "n-gpu-layers",
    "gpu-layers": "n-gpu-layers",
    "s": "seed",
    "n": "n-predict",
    "predict": "n-predict",
    "np": "parallel",
    "n-parallel": "parallel",
    "embedding": "embeddings",
    "embd": "embeddings",
    "m": "model",
    "a": "alias",
    "temperature": "temp",
    "hf": "hf-repo",
    "hfr": "hf-repo",
    "mm": "mmproj",
    "typical-p": "typical",
}

BOOLEAN_FLAGS = frozenset({"embeddings", "jinja", "load-on-startup", "pin", "no-mmap", "mlock"})
_TRUE = frozenset({"1", "true", "yes", "on", "enabled", ""})
_FALSE = frozenset({"0", "false", "no", "off", "disabled"})


def canonical_key(name: str) -> str:
    """`--ctx-size`, `-c`, `c`, `ctx_size` and `LLAMA_ARG_CTX_SIZE` all become `ctx-size`."""
    key = name.strip()
    if key.upper().startswith("LLAMA_ARG_"):
        key = key[len("LLAMA_ARG_") :]
    key = key.lstrip("-").lower().replace("_", "-")
    return FLAG_ALIASES.get(key, key)


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_CACHE") or Path.home() / ".cache" / "llama-router")


class RouterConfig(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    models_dir: str | None = None
    models_preset: str | None = None
    models_max: int = 4
    models_autoload: bool = True
    sleep_idle_seconds: float | None = None
    api_keys: list[str] = []
    cors_origins: list[str] = []
    max_waiting_per_model: int = 256
    heartbeat_seconds: float = 60.0
    timeout: float = 3600.0
    cache_dir: str = msgspec.field(default_factory=lambda: str(default_cache_dir()))
    stream_buffer_bytes: int = 4 * 1024 * 1024
    stream_ttl_seconds: float = 300.0
    response_buffer_bytes: int = 1024 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    stop_timeout: float = 10.0
    log_level: str = "info"
    # LLAMA_SERVER_DEBUG_FAKE_TIMING: slow loads and requests down on purpose, for tests
    debug_fake_timing: bool = False
    # llama-server model flags given on the command line: defaults for every model
    model_flags: dict[str, str] = {}


# Generation flags are forwarded to the engine as sampling defaults under these names.
SAMPLING_FLAGS = frozenset(
    {
        "temp",
        "top-k",
        "top-p",
        "min-p",
        "typical",
        "repeat-penalty",
        "presence-penalty",
        "frequency-penalty",
    }
)


def model_settings(
    model_id: str, path: str, mmproj: str | None, flags: dict[str, str]
) -> ModelSettings:
    """Typed worker settings from merged flag strings; a bad value raises ValueError."""

    def integer(key: str, default: int) -> int:
        return int(flags[key]) if key in flags else default

    def optional_int(key: str) -> int | None:
        return int(flags[key]) if key in flags else None

    sampling = {key: float(value) for key, value in flags.items() if key in SAMPLING_FLAGS}
    return ModelSettings(
        model_id=model_id,
        path=path,
        mmproj=flags.get("mmproj", mmproj),
        ctx_size=integer("ctx-size", 4096),
        threads=optional_int("threads"),
        threads_batch=optional_int("threads-batch"),
        batch_size=integer("batch-size", 2048),
        ubatch_size=integer("ubatch-size", 512),
        n_gpu_layers=integer("n-gpu-layers", 0),
        seed=integer("seed", -1),
        n_predict=integer("n-predict", -1),
        embeddings=parse_bool(flags.get("embeddings", "false")),
        pooling=flags.get("pooling"),
        chat_template=flags.get("chat-template"),
        sampling=sampling,
    )
