"""`llama-router [flags]`: llama-server's flag names and env names, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import uvicorn

from router import single_model
from router.config import RouterConfig, default_cache_dir, parse_bool
from router.control.app import create_app
from router.control.downloads import download_with_bars, resolve
from router.control.state import RouterState
from router.flags import (
    ENV_NAMES,
    UsageError,
    canonical_key,
    long_spellings,
    parse_model_flags,
    unapplied,
)
from router.http.process import configure_logging, uvicorn_config
from router.http.routes.ops import build_info
from router.model_settings import model_settings
from router.presets import PresetError, split_list
from router.upstream import UpstreamServer, parse_upstream_server
from workers.cores import physical_cores
from workers.download import DownloadError
from workers.errors import ApiError
from workers.ring import MAX_READER_PROCESSES

log = logging.getLogger("llama-router")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def http_workers(value: str) -> int:
    """`--http-workers N` or `auto` (one per core this process may run on)."""
    count = len(os.sched_getaffinity(0)) if value == "auto" else int(value)
    if not 1 <= count <= MAX_READER_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_READER_PROCESSES}, or auto")
    return count


def sessions_redis(url: str | None) -> str | None:
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"--sessions-redis: expected redis://HOST:PORT/DB, got {url!r}")
    return url or None


def upstream_server(value: str) -> UpstreamServer:
    try:
        return parse_upstream_server(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-router",
        allow_abbrev=False,
        description="One OpenAI-compatible endpoint in front of many local GGUF models. "
        "Any other llama-server model flag (-c, -ngl, --temp, ...) is a default for every model.",
    )
    add = parser.add_argument
    add(
        "--host",
        default=_env("LLAMA_ARG_HOST", "127.0.0.1"),
        help="addresses to listen on, comma-separated (a path ending in .sock is a UNIX socket)",
    )
    add("--port", type=int, default=int(_env("LLAMA_ARG_PORT", "8080") or 8080))
    add(
        "--http-workers",
        type=http_workers,
        default=_env("LLAMA_ARG_HTTP_WORKERS", "1"),
        help="HTTP processes accepting on the port (the main one included); `auto`: one per core",
    )
    add(
        "--models-dir",
        default=_env("LLAMA_ARG_MODELS_DIR"),
        help="one .gguf or sub-directory per model",
    )
    add(
        "--models-preset", default=_env("LLAMA_ARG_MODELS_PRESET"), help="INI file of model presets"
    )
    add(
        "--models-max",
        type=int,
        default=int(_env("LLAMA_ARG_MODELS_MAX", "4") or 4),
        help="running models at most; 0 = no limit",
    )
    add(
        "--upstream",
        dest="upstreams",
        action="append",
        type=upstream_server,
        default=[],
        metavar="[PREFIX=]URL",
        help="list every model of this OpenAI-compatible server (its /v1 base URL) as "
        "PREFIX/ID (PREFIX: the URL's host); repeatable",
    )
    add(
        "--upstream-check-seconds",
        type=float,
        default=5.0,
        help="how often each upstream server's models route is asked whether it is up",
    )
    autoload = parse_bool(_env("LLAMA_ARG_MODELS_AUTOLOAD", "true") or "true")
    add("--models-autoload", dest="models_autoload", action="store_true", default=autoload)
    add("--no-models-autoload", dest="models_autoload", action="store_false")
    slots = parse_bool(_env("LLAMA_ARG_ENDPOINT_SLOTS", "true") or "true")
    add("--slots", dest="slots", action="store_true", default=slots, help="serve GET /slots")
    add("--no-slots", dest="slots", action="store_false")
    metrics = parse_bool(_env("LLAMA_ARG_ENDPOINT_METRICS", "false") or "false")
    add("--metrics", dest="metrics", action="store_true", default=metrics, help="serve /metrics")
    add("--no-metrics", dest="metrics", action="store_false")
    add(
        "--metrics-public",
        action="store_true",
        default=parse_bool(_env("LLAMA_ARG_METRICS_PUBLIC", "false") or "false"),
        help="serve /metrics without an API key (for a scraper)",
    )
    add(
        "--sleep-idle-seconds",
        type=float,
        default=None,
        help="free an idle model's memory after N seconds; the next request wakes it",
    )
    add("--api-key", default=_env("LLAMA_API_KEY"), help="comma-separated keys")
    add("--api-key-file", default=None, help="one key per line")
    add(
        "--cors-origins",
        default=_env("LLAMA_ARG_CORS_ORIGINS", ""),
        help="comma-separated origins allowed to call from a browser; `localhost` is any local "
        "page, `*` any page (default: same origin only)",
    )
    add("--cors-methods", default=_env("LLAMA_ARG_CORS_METHODS", "GET, POST, DELETE, OPTIONS"))
    add("--cors-headers", default=_env("LLAMA_ARG_CORS_HEADERS", "*"))
    credentials = parse_bool(_env("LLAMA_ARG_CORS_CREDENTIALS", "true") or "true")
    add("--cors-credentials", dest="cors_credentials", action="store_true", default=credentials)
    add("--no-cors-credentials", dest="cors_credentials", action="store_false")
    add(
        "--max-waiting-per-model",
        type=int,
        default=256,
        help="requests that may wait for one model to load; more answer 503",
    )
    add(
        "--worker-heartbeat-seconds",
        type=float,
        default=60.0,
        help="a loaded worker silent this long is taken for hung and restarted",
    )
    add(
        "-to",
        "--timeout",
        type=float,
        default=3600.0,
        help="longest wait for a model, and longest silence of its worker (s)",
    )
    add("--cache-dir", default=str(default_cache_dir()), help="downloaded models (env LLAMA_CACHE)")
    add(
        "--stream-buffer-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="bytes a resumable stream keeps for replay",
    )
    add(
        "--response-buffer-bytes",
        type=int,
        default=1024 * 1024,
        help="bytes an answer may run ahead of a client that reads slowly",
    )
    add(
        "--slot-keep-bytes",
        type=int,
        default=1 << 30,
        help="disk for the KV caches of swapped-out models' slots, in all; 0 = keep none",
    )
    add("--slot-save-path", help="folder where POST /slots/{id}?action=save|restore keeps slots")
    add(
        "--stream-ttl-seconds",
        type=float,
        default=300.0,
        help="how long a finished resumable stream stays replayable",
    )
    add(
        "--sessions-redis",
        default=_env("LLAMA_ARG_SESSIONS_REDIS"),
        metavar="redis://HOST:PORT/DB",
        help="also keep every session in Redis, so other replicas using the same Redis replay, "
        "follow, look up and stop it",
    )
    add(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="largest request body accepted"
    )
    add(
        "--max-header-bytes",
        type=int,
        default=64 * 1024,
        help="largest request line plus headers accepted",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add(
        "-v",
        "--verbose",
        "--log-verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        help="the same as --log-level debug",
    )
    add("--version", action="version", version=f"llama-router {build_info()}")
    return parser


def _router_flag_keys(parser: argparse.ArgumentParser) -> set[str]:
    """The canonical names of the flags argparse reads here (some are llama-server's too)."""
    return {canonical_key(option) for action in parser._actions for option in action.option_strings}


def _model_flags_from_env(router_keys: set[str]) -> dict[str, str]:
    """llama-server reads every flag from its LLAMA_ARG_ env name too; the command line wins."""
    flags = {}
    for name, value in os.environ.items():
        if name.startswith("LLAMA_ARG_"):
            key = canonical_key(name)
            if key in ENV_NAMES.values() and key not in router_keys:
                flags[key] = value
    return flags


def config_from_args(argv: Sequence[str] | None = None) -> RouterConfig:
    parser = build_parser()
    option_strings = [option for action in parser._actions for option in action.option_strings]
    tokens = long_spellings(sys.argv[1:] if argv is None else argv, option_strings)
    args, rest = parser.parse_known_args(tokens)
    router_keys = _router_flag_keys(parser)
    model_flags = {
        **_model_flags_from_env(router_keys),
        **parse_model_flags(rest, known_elsewhere=option_strings),
    }
    model_settings("command line", "", None, model_flags)  # a bad value stops the start
    keys = [key.strip() for key in (args.api_key or "").split(",") if key.strip()]
    if args.api_key_file:
        keys += [
            line.strip()
            for line in Path(args.api_key_file).read_text().splitlines()
            if line.strip()
        ]
    return RouterConfig(
        hosts=split_list(args.host) or ["127.0.0.1"],
        port=args.port,
        http_workers=args.http_workers,
        models_dir=args.models_dir,
        models_preset=args.models_preset,
        models_max=args.models_max,
        upstreams=args.upstreams,
        upstream_check_seconds=args.upstream_check_seconds,
        models_autoload=args.models_autoload,
        slots_endpoint=args.slots,
        metrics_endpoint=args.metrics,
        metrics_public=args.metrics_public,
        sleep_idle_seconds=args.sleep_idle_seconds,
        api_keys=keys,
        cors_origins=split_list(args.cors_origins),
        cors_methods=split_list(args.cors_methods),
        cors_headers=split_list(args.cors_headers),
        cors_credentials=args.cors_credentials,
        max_waiting_per_model=args.max_waiting_per_model,
        heartbeat_seconds=args.worker_heartbeat_seconds,
        timeout=args.timeout,
        cache_dir=args.cache_dir,
        stream_buffer_bytes=args.stream_buffer_bytes,
        stream_ttl_seconds=args.stream_ttl_seconds,
        sessions_redis=sessions_redis(args.sessions_redis),
        response_buffer_bytes=args.response_buffer_bytes,
        slot_keep_bytes=args.slot_keep_bytes,
        slot_save_path=args.slot_save_path,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        log_level=args.log_level,
        debug_fake_timing=bool(os.environ.get("LLAMA_SERVER_DEBUG_FAKE_TIMING")),
        threads=int(model_flags.get("threads") or 0) or physical_cores(),
        poll=int(model_flags["poll"]) if "poll" in model_flags else None,
        model_flags=model_flags,
        unapplied_flags=unapplied(model_flags, router_keys | single_model.MODEL_KEYS | {"poll"}),
    )


class RouterServer(uvicorn.Server):
    """Ends every generation as soon as a stop signal arrives, so open streams close promptly."""

    def __init__(self, config: uvicorn.Config, state: RouterState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: the stop itself runs on the event loop.
        if self._state.loop is not None:
            self._state.loop.call_soon_threadsafe(self._state.stop_generations)
        super().handle_exit(sig, frame)


def _banner(config: RouterConfig, state: RouterState) -> str:
    url = f"http://{_url_host(config.hosts[0])}:{config.port}"
    # the bundled chat model when it is served: the base model cannot chat
    first = state.bundled[0].id if state.bundled else next(iter(state.supervisor.models), "MODEL")
    question = '[{"role": "user", "content": "What is 2+2?"}]'
    return (
        f"llama-router serving {len(state.supervisor.models)} model(s) at {url}\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{first}", "messages": {question}}}\''
    )


def pull(argv: Sequence[str]) -> int:
    """`llama-router pull user/repo:QUANT` (or `--url URL NAME`): download into the cache."""
    parser = argparse.ArgumentParser(prog="llama-router pull")
    parser.add_argument("model", help="user/repo[:QUANT], or a name for --url")
    parser.add_argument("--url", help="a direct https://.../file.gguf address")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args(argv)
    try:
        job = resolve(args.model, args.url, args.cache_dir)
    except ApiError as error:
        print(f"llama-router pull: {error.message}", file=sys.stderr)
        return 1
    try:
        download_with_bars(job)
    except DownloadError as error:
        print(f"llama-router pull: {error}", file=sys.stderr)
        return 1
    print(f"{job.model_id} is in {job.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["pull"]:
        return pull(arguments[1:])
    try:
        config = config_from_args(argv)
        single_model.prepare(config)  # `-hf`: its model is fetched before the server starts
        sockets = listen_sockets(config.hosts, config.port, config.http_workers > 1)
    except (UsageError, OSError, ValueError) as error:
        print(f"llama-router: error: {error}", file=sys.stderr)
        return 1
    if config.unapplied_flags:
        names = ", ".join(f"--{name}" for name in config.unapplied_flags)
        print(
            f"llama-router: warning: llama-server flags accepted but not applied here: {names}",
            file=sys.stderr,
        )
    configure_logging(config)
    try:
        app = create_app(config, sockets)
    except (PresetError, OSError, ValueError) as error:
        print(f"llama-router: {error}", file=sys.stderr)
        return 1
    state: RouterState = app.state.router
    server = RouterServer(uvicorn_config(app, config), state)
    print(_banner(config, state), flush=True)
    try:
        server.run(sockets=sockets)
    finally:
        _remove_unix_sockets(config.hosts)
    return 0 if server.started else 1


def listen_sockets(hosts: list[str], port: int, reuse_port: bool = False) -> list[socket.socket]:
    """One listening socket per address, as llama-server's `--host a,b`: with several
    addresses `::` means IPv6 only, and a path ending in `.sock` is a UNIX socket. With
    `reuse_port`, the other HTTP processes bind the TCP addresses too (router/control/
    http_processes.py)."""
    sockets = []
    several = len([host for host in hosts if not host.endswith(".sock")]) > 1
    try:
        for host in hosts:
            unix = host.endswith(".sock")
            tcp = _unix_socket(host) if unix else _tcp_socket(host, port, several, reuse_port)
            sockets.append(tcp)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _tcp_socket(host: str, port: int, ipv6_only: bool, reuse_port: bool) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise OSError(f"cannot listen on {host}: {error.strerror}") from error
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6_only))
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    return sock


def _unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {path}: {error.strerror}") from error
    return sock


def _remove_unix_sockets(hosts: list[str]) -> None:
    for host in hosts:
        if host.endswith(".sock"):
            Path(host).unlink(missing_ok=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
