"""`make bench`: llama-router against llama.cpp's own router, measured in the same run.

Prints cold-load time, warm latency p50/p99 (and the same request straight into the engine,
in process), requests per second at 16 concurrent clients, and streaming tokens per second of
the bundled Gemma model. Ratios are llama-router / llama-server: below 1 is better for times,
above 1 for rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench import (
    cores,
    downloads,
    features,
    http_workers,
    measure,
    metrics,
    redis_sessions,
    scheduling,
    slots,
    streams,
    upstream,
)
from bench.targets import (
    Target,
    find_reference,
    reference_target,
    router_target,
    single_model_reference,
)
from router.bundled import BUNDLED_DIR, gemma_model
from router.config import default_cache_dir
from router.model_settings import model_settings
from tests.tinymodels import write_slow_llama, write_tiny_llama

TINY = ["tiny-0", "tiny-1", "tiny-2", "tiny-3"]
GEMMA_EOS = [1, 106]  # <eos>, <end_of_turn>


def engine_latencies(model_path: Path, count: int) -> list[float]:
    """The same warm request handled by the engine in this process: no HTTP, no pipe, no ring."""
    from workers.cores import WorkerCores
    from workers.engine_counters import EngineCounters
    from workers.engines.llama_cpp import LlamaEngine

    settings = model_settings("direct", str(model_path), None, {})
    engine = LlamaEngine(
        settings, lambda _: None, WorkerCores.alone(), lambda: None, EngineCounters()
    )
    body = msgspec.json.encode(measure.completion("direct"))
    engine.handle("/v1/completions", body, lambda: False)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        engine.handle("/v1/completions", body, lambda: False)
        latencies.append(time.perf_counter() - started)
    return latencies


def run_target(target: Target, log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    target.start(log_dir)
    try:
        result: dict[str, Any] = {}
        result["cold_load_s"] = statistics.median(
            measure.cold_load_seconds(target.url, model, settle=1.5) for model in TINY[:3]
        )
        result["warm"] = measure.summary(measure.warm_latencies(target.url, TINY[3], args.requests))
        result["rps_16"] = measure.requests_per_second(
            target.url, TINY, args.clients, args.requests // 4
        )
        result["gemma_stream_tps"] = measure.streaming_tokens_per_second(
            target.url, "gemma", args.tokens, GEMMA_EOS
        )
        return result
    finally:
        target.stop()


def run_scheduling(target: Target, log_dir: Path) -> dict[str, Any]:
    target.start(log_dir)
    try:
        return {
            "swap_first_byte_s": scheduling.swap_latency(target.url, ("tiny-0", "tiny-1")),
            "mixed_8_clients_3_models": scheduling.mixed_load(
                target.url, ["tiny-0", "tiny-1", "tiny-2"], clients=8, per_client=12
            ),
            "loads": target.log_count(log_dir),
        }
    finally:
        target.stop()


def run_streams(target: Target, log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    target.start(log_dir)
    try:
        size = streams.make_session(target.url, "big", "tiny-0", args.session_tokens)
        result: dict[str, Any] = {"session_bytes": size}
        result["replay"] = streams.replay_throughput(target.url, "big")
        result["live_tail"] = streams.readers_capacity(
            target.url, "slow", 600, [1, 25, 50, 100, 200, 400]
        )
        return result
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    every = [
        "core",
        "scheduling",
        "streams",
        "downloads",
        "cores",
        "slots",
        "metrics",
        "features",
        "http-workers",
        "upstream",
        "redis-sessions",
    ]
    parser.add_argument("parts", nargs="*", help=f"some of {', '.join(every)} (default: all)")
    parser.add_argument("--reference", help="llama-server binary (else $LLAMA_SERVER_BIN)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument(
        "--session-tokens", type=int, default=9000, help="about 4 MiB of events on tiny models"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="repeats of the cores, slots, features, http-workers, upstream and redis-sessions "
        "parts",
    )
    parser.add_argument("--out", default="bench/results/latest.json")
    args = parser.parse_args()
    args.parts = args.parts or every
    if unknown := set(args.parts) - set(every):
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="llama-router-bench-"))
    models = work / "models"
    for seed, name in enumerate(TINY):
        write_tiny_llama(models / f"{name}.gguf", seed=seed)
    gemma = Path(gemma_model(default_cache_dir() / BUNDLED_DIR).path)
    (models / "gemma.gguf").symlink_to(gemma)
    flags = ["-c", "4096", "--models-max", "8"]

    reference = find_reference(args.reference)
    results: dict[str, Any] = {}
    if "core" in args.parts:
        core: dict[str, Any] = {
            "engine_direct": measure.summary(
                engine_latencies(models / "tiny-3.gguf", args.requests)
            )
        }
        core["llama-router"] = run_target(router_target(models, work / "cache", flags), work, args)
        if reference:
            core["llama-server"] = run_target(
                reference_target(reference, models, flags), work, args
            )
        report(core)
        results["core"] = core
    if "scheduling" in args.parts:
        cap = ["-c", "4096", "--models-max", "1"]
        sched = {"llama-router": run_scheduling(router_target(models, work / "cache", cap), work)}
        if reference:
            sched["llama-server"] = run_scheduling(reference_target(reference, models, cap), work)
        print("\nscheduling at --models-max 1:", json.dumps(sched, indent=2))
        results["scheduling"] = sched
    if "streams" in args.parts:
        slow_model(models)
        ctx = ["-c", str(args.session_tokens + 64), "--models-max", "8"]
        flow = {"llama-router": run_streams(router_target(models, work / "cache", ctx), work, args)}
        print("\nresumable streams:", json.dumps(flow, indent=2))
        results["streams"] = flow
    if "downloads" in args.parts:
        fetched = downloads.run(
            lambda cache: router_target(models, cache, ["--models-max", "2"]), work, 256
        )
        print("\ndownloads:", json.dumps(fetched, indent=2))
        results["downloads"] = fetched
    if "cores" in args.parts:
        families = core_families(models)
        results["cores"] = compare_runs(
            "several busy models, -c 1024 --models-max 3",
            lambda target: cores.run(target.url, families, args.tokens),
            lambda: router_target(models, work / "cache", ["-c", "1024", "--models-max", "3"]),
            reference
            and (lambda: reference_target(reference, models, ["-c", "1024", "--models-max", "3"])),
            work,
            args.runs,
        )
    if "slots" in args.parts:
        # 4,096 tokens a slot, as llama-server gives each of -np 4 slots: room for the long turn
        parallel = ["-c", "16384", "-np", "4", "--models-max", "1"]
        results["slots"] = compare_runs(
            "one model, -np 4",
            lambda target: slots.run(target.url, "gemma", args.tokens, "tiny-0"),
            lambda: router_target(models, work / "cache", parallel),
            reference and (lambda: reference_target(reference, models, parallel)),
            work,
            args.runs,
        )
    if "metrics" in args.parts:
        loaded = [f"tiny-{n}" for n in range(10)]
        for seed, name in enumerate(loaded):
            write_tiny_llama(models / f"{name}.gguf", seed=seed)
        flags = ["-c", "1024", "--models-max", "11", "--metrics"]
        observed = metrics.run(
            router_target(models, work / "cache", flags),
            work,
            loaded,
            args.tokens,
            GEMMA_EOS,
        )
        print("\n/metrics and the web page:", json.dumps(observed, indent=2))
        results["metrics"] = observed
    if "features" in args.parts:
        flags = ["-c", "4096", "--models-max", "2"]
        results["features"] = compare_runs(
            "chat features on the token path, Gemma 270M",
            lambda target: features.measure(target.url, "gemma", args.tokens),
            lambda: router_target(models, work / "cache", flags),
            reference and (lambda: reference_target(reference, models, flags)),
            work,
            args.runs,
        )
    if "http-workers" in args.parts:
        slow_model(models)
        flags = ["-c", "4096", "--models-max", "4"]
        results["http-workers"] = http_workers.run(
            lambda more: router_target(models, work / "cache", [*flags, *more]),
            work,
            args.runs,
            args.requests,
        )
    if "upstream" in args.parts:
        flags = ["-c", "4096", "--models-max", "4"]

        def far(more: list[str]) -> Target:
            if reference:
                tiny = models / f"{upstream.MODEL}.gguf"
                return single_model_reference(reference, tiny, ["-c", "4096", *more])
            return router_target(models, work / "cache", [*flags, *more])

        results["upstream"] = upstream.run(
            far,
            lambda preset: router_target(
                models, work / "cache", [*flags, "--models-preset", str(preset)]
            ),
            work,
            args.runs,
            args.requests,
        )
    if "redis-sessions" in args.parts:
        slow_model(models)
        results["redis-sessions"] = redis_sessions.run(
            lambda more: router_target(models, work / "cache", ["-c", "4096", *more]),
            work,
            args.runs,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out}   (server logs: {work})")


def slow_model(models: Path) -> Path:
    """A small test model of a few hundred tokens/s, written once for the parts that use it."""
    slow = models / "slow.gguf"
    if not slow.exists():
        write_slow_llama(slow)
    return slow


def core_families(models: Path) -> dict[str, list[str]]:
    """Three names for each of two models (the same file under each name): slow-a/b/c, a small
    test model, and gemma-a/b/c, the bundled Gemma; and tiny-a."""
    families: dict[str, list[str]] = {"slow": [], "gemma": []}
    for family, source in (("slow", slow_model(models)), ("gemma", models / "gemma.gguf")):
        for letter in "abc":
            name = f"{family}-{letter}"
            link = models / f"{name}.gguf"
            if not link.exists():
                link.symlink_to(source.resolve())
            families[family].append(name)
    tiny = models / "tiny-a.gguf"
    if not tiny.exists():
        tiny.symlink_to((models / "tiny-0.gguf").resolve())
    return families


def compare_runs(
    title: str,
    measure_one: Callable[[Target], dict[str, float]],
    ours: Callable[[], Target],
    theirs: Callable[[], Target] | None,
    work: Path,
    runs: int,
) -> dict[str, Any]:
    """Each server in turn, `runs` times, alternating; medians, spreads and their ratio."""
    figures: dict[str, list[dict[str, float]]] = {"llama-router": []}
    makers = {"llama-router": ours}
    if theirs:
        figures["llama-server"] = []
        makers["llama-server"] = theirs
    for _ in range(runs):
        for name, make in makers.items():
            target = make()
            target.start(work)
            try:
                figures[name].append(measure_one(target))
            finally:
                target.stop()
    print(f"\n{title}: median of {runs} runs (min-max)")
    print(f"{'measure':34} {'llama-router':>22} {'llama-server':>22} {'ratio':>6}")
    for key in figures["llama-router"][0]:
        cells, medians = [], []
        for name in makers:
            values = [run[key] for run in figures[name]]
            medians.append(statistics.median(values))
            cells.append(measure.spread(values))
        ratio = f"{medians[0] / medians[1]:6.2f}" if len(medians) == 2 and medians[1] else ""
        print(f"{key:34} {cells[0]:>22} {cells[1] if len(cells) > 1 else '':>22} {ratio}")
    return figures


def report(results: dict[str, Any]) -> None:
    ours = results["llama-router"]
    ref = results.get("llama-server")
    rows = [
        ("cold load, request to full response (s)", lambda r: r["cold_load_s"]),
        ("warm request p50 (ms)", lambda r: r["warm"]["p50_ms"]),
        ("warm request p99 (ms)", lambda r: r["warm"]["p99_ms"]),
        ("requests/s, 16 clients", lambda r: r["rps_16"]),
        ("Gemma 270M streaming tokens/s", lambda r: r["gemma_stream_tps"]),
    ]
    print(f"\n{'measure':44} {'llama-router':>13} {'llama-server':>13} {'ratio':>8}")
    for label, get in rows:
        mine = get(ours)
        theirs = get(ref) if ref else None
        ratio = "" if theirs is None else f"{mine / theirs:8.2f}"
        shown = "" if theirs is None else f"{theirs:13.2f}"
        print(f"{label:44} {mine:13.2f} {shown:>13} {ratio:>8}")
    direct = results["engine_direct"]["p50_ms"]
    print(
        f"\nengine called directly, same warm request p50: {direct:.3f} ms; "
        f"llama-router adds {ours['warm']['p50_ms'] - direct:.3f} ms"
    )
    print("ratio = llama-router / llama-server: below 1 is better for times, above 1 for rates")


if __name__ == "__main__":
    main()
