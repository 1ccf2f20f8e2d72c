"""`llama-router [flags]`: llama-server's flag names and env names, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from tqdm import tqdm

from router.app import create_app
from router.config import BOOLEAN_FLAGS, RouterConfig, canonical_key, default_cache_dir, parse_bool
from router.downloads import resolve
from router.http_limits import bounded_head_protocol
from router.presets import PresetError, split_list
from router.state import RouterState
from workers.download import DownloadError, Progress, download
from workers.errors import ApiError

log = logging.getLogger("llama-router")


class UsageError(Exception):
    pass


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-router",
        allow_abbrev=False,
        description="One OpenAI-compatible endpoint in front of many local GGUF models. "
        "Any other llama-server model flag (-c, -ngl, --temp, ...) is a default for every model.",
    )
    add = parser.add_argument
    add("--host", default=_env("LLAMA_ARG_HOST", "127.0.0.1"))
    add("--port", type=int, default=int(_env("LLAMA_ARG_PORT", "8080") or 8080))
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
    autoload = parse_bool(_env("LLAMA_ARG_MODELS_AUTOLOAD", "true") or "true")
    add("--models-autoload", dest="models_autoload", action="store_true", default=autoload)
    add("--no-models-autoload", dest="models_autoload", action="store_false")
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
        default="",
        help="comma-separated origins allowed to call from a browser (default: same origin only)",
    )
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
        "--stream-ttl-seconds",
        type=float,
        default=300.0,
        help="how long a finished resumable stream stays replayable",
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
    return parser


def parse_model_flags(tokens: Sequence[str]) -> dict[str, str]:
    """Unknown flags are llama-server model flags: `--key value`, `--key=value` or `--flag`."""
    flags: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("-") or _is_number(token):
            raise UsageError(f"unexpected argument: {token}")
        name, has_value, value = token.partition("=")
        key = canonical_key(name)
        index += 1
        if has_value:
            flags[key] = value
            continue
        following = tokens[index] if index < len(tokens) else None
        takes_value = following is not None and (
            not following.startswith("-") or _is_number(following)
        )
        if key in BOOLEAN_FLAGS or (key.startswith("no-") and key[3:] in BOOLEAN_FLAGS):
            takes_value = False
        if takes_value:
            assert following is not None
            flags[key] = following
            index += 1
        elif key.startswith("no-") and key[3:] in BOOLEAN_FLAGS:
            flags[key[3:]] = "false"
        else:
            flags[key] = "true"
    return flags


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def config_from_args(argv: Sequence[str] | None = None) -> RouterConfig:
    args, rest = build_parser().parse_known_args(argv)
    keys = [key.strip() for key in (args.api_key or "").split(",") if key.strip()]
    if args.api_key_file:
        keys += [
            line.strip()
            for line in Path(args.api_key_file).read_text().splitlines()
            if line.strip()
        ]
    return RouterConfig(
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        models_preset=args.models_preset,
        models_max=args.models_max,
        models_autoload=args.models_autoload,
        sleep_idle_seconds=args.sleep_idle_seconds,
        api_keys=keys,
        cors_origins=split_list(args.cors_origins),
        max_waiting_per_model=args.max_waiting_per_model,
        heartbeat_seconds=args.worker_heartbeat_seconds,
        timeout=args.timeout,
        cache_dir=args.cache_dir,
        stream_buffer_bytes=args.stream_buffer_bytes,
        stream_ttl_seconds=args.stream_ttl_seconds,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        log_level=args.log_level,
        debug_fake_timing=bool(os.environ.get("LLAMA_SERVER_DEBUG_FAKE_TIMING")),
        model_flags=parse_model_flags(rest),
    )


# Streams end within a token of the stop signal; a connection still open after this is cut.
GRACEFUL_SHUTDOWN_SECONDS = 5


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
    url = f"http://{config.host}:{config.port}"
    first = next(iter(state.supervisor.models), "MODEL")
    return (
        f"llama-router serving {len(state.supervisor.models)} model(s) at {url}\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{first}", "messages": [{{"role": "user", "content": "Hello"}}]}}\''
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
    bars: dict[str, tqdm] = {}

    def show(progress: Progress) -> None:
        bar = bars.get(progress.url)
        if bar is None:
            name = progress.url.rsplit("/", 1)[-1]
            bar = bars[progress.url] = tqdm(
                total=progress.total, unit="B", unit_scale=True, desc=name
            )
        bar.update(progress.done - bar.n)

    try:
        download(job, show)
    except DownloadError as error:
        print(f"llama-router pull: {error}", file=sys.stderr)
        return 1
    finally:
        for bar in bars.values():
            bar.close()
    print(f"{job.model_id} is in {job.folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["pull"]:
        return pull(arguments[1:])
    try:
        config = config_from_args(argv)
    except (UsageError, OSError, ValueError) as error:
        print(f"llama-router: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app = create_app(config)
    except (PresetError, OSError, ValueError) as error:
        print(f"llama-router: {error}", file=sys.stderr)
        return 1
    state: RouterState = app.state.router
    server = RouterServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="on",
            http=bounded_head_protocol(config.max_header_bytes),
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ),
        state,
    )
    print(_banner(config, state), flush=True)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
