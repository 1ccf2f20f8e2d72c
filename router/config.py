"""Router settings."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from router.upstream import UpstreamServer

_TRUE = frozenset({"1", "true", "yes", "on", "enabled", ""})
_FALSE = frozenset({"0", "false", "no", "off", "disabled"})


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
    hosts: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1"])
    port: int = 8080
    http_workers: int = 1  # HTTP processes accepting on the port, the main one included
    models_dir: str | None = None
    models_preset: str | None = None
    models_max: int = 4
    upstreams: list[UpstreamServer] = []  # --upstream: servers whose every model is listed
    upstream_check_seconds: float = 5.0  # how often each upstream's models route is asked
    threads: int = 1  # cores the model workers share (--threads; default the physical cores)
    poll: int | None = None  # llama-server's --poll: how long idle llama.cpp threads spin
    slots_endpoint: bool = True  # GET /slots, as llama-server's --slots
    metrics_endpoint: bool = False  # GET /metrics, as llama-server's --metrics
    metrics_public: bool = False  # GET /metrics without an API key
    slot_save_path: str | None = None  # llama-server's: where POST /slots/{id} saves and restores
    slot_keep_bytes: int = 1 << 30  # swapped-out models' slots kept on disk, in all
    models_autoload: bool = True
    sleep_idle_seconds: float | None = None
    api_keys: list[str] = []
    cors_origins: list[str] = []
    cors_methods: list[str] = msgspec.field(
        default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"]
    )
    cors_headers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    cors_credentials: bool = True
    max_waiting_per_model: int = 256
    heartbeat_seconds: float = 60.0
    timeout: float = 3600.0
    cache_dir: str = msgspec.field(default_factory=lambda: str(default_cache_dir()))
    stream_buffer_bytes: int = 4 * 1024 * 1024
    stream_ttl_seconds: float = 300.0
    sessions_redis: str | None = None  # redis://HOST:PORT/DB: sessions shared by replicas
    response_buffer_bytes: int = 1024 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    stop_timeout: float = 10.0
    log_level: str = "info"
    # LLAMA_SERVER_DEBUG_FAKE_TIMING: slow loads and requests down on purpose, for tests
    debug_fake_timing: bool = False
    # llama-server model flags given on the command line: defaults for every model
    model_flags: dict[str, str] = {}
    # llama-server flags given that nothing here honours (warned about at start, in /props)
    unapplied_flags: list[str] = []
