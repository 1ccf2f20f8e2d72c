"""`make conformance`: llama.cpp's own server tests against llama-router and llama-server.

Downloads the llama-cpp-python sdist pinned in setup.cfg, takes the server tests it ships
(`vendor/llama.cpp/tools/server/tests/unit/`), and runs the chosen files twice through their own
`LLAMA_SERVER_BIN_PATH`: once with llama-router behind it, once with a llama-server built from the
same sdist. Every Hugging Face repo the tests name comes from a local hub on 127.0.0.1 holding tiny
random-weight models, so nothing reaches the network. Prints passed / failed / skipped per file on
each side, then every test that passes there and fails here with its reason, and exits non-zero
when one of those is not in known_gaps.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.targets import find_reference
from tests.conformance.hub import CACHE_IDS, build_hub
from tests.conformance.known_gaps import KNOWN_GAPS
from tests.conformance.report import Outcome, read_junit, regressions, table
from tests.conformance.sdist import extract_server_tests, fetch_sdist, pinned_version, tests_venv
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRATCH = ROOT / "build" / "conformance"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
DEFAULT_FILES = (
    "test_router.py",
    "test_stream.py",
    "test_completion.py",
    "test_chat_completion.py",
    "test_tokenize.py",
    "test_embedding.py",
    "test_security.py",
    "test_basic.py",
)
# Variables of the caller's shell that would change what either server does.
INHERITED_OUT = ("LLAMA_ARG_", "LLAMA_API_KEY", "HF_", "MODEL_ENDPOINT", "LLAMA_CACHE")


@dataclass
class Run:
    name: str
    binary: str
    outcomes: dict[str, Outcome]
    seconds: float
    log: Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make conformance ARGS=...", description=__doc__)
    parser.add_argument(
        "--reference",
        help="llama-server binary (default: $LLAMA_SERVER_BIN, the scratch build, or PATH); "
        "'none' runs llama-router only",
    )
    parser.add_argument(
        "--files", default=",".join(DEFAULT_FILES), help="comma list of files under unit/"
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, for both runs")
    parser.add_argument(
        "--router-flags",
        default="",
        help="flags added to every llama-router the tests start, e.g. `--http-workers 2`",
    )
    parser.add_argument(
        "--test-timeout", type=int, default=300, help="seconds before one test counts as failed"
    )
    parser.add_argument(
        "--only",
        choices=["llama-router", "llama-server"],
        help="run one side; llama-router alone is compared with the last llama-server run",
    )
    parser.add_argument(
        "--seed-router-cache",
        action="store_true",
        help="diagnostic, not conformance: `llama-router pull` the models llama-server's cache "
        "holds after the tests' load_all, so router-mode tests show what else fails",
    )
    return parser.parse_args(argv)


def router_wrapper(into: Path, flags: str = "") -> Path:
    """What the tests start as their llama-server: this checkout's llama-router, with `flags`
    after the tests' own."""
    router = Path(sys.executable).parent / "llama-router"
    if not router.is_file():
        raise SystemExit(f"{router} is missing: run `make install-test` first")
    wrapper = into / "llama-router-as-llama-server"
    extra = " ".join(shlex.quote(flag) for flag in shlex.split(flags))
    wrapper.write_text(f'#!/bin/sh\nexec "{router}" "$@" {extra}\n')
    wrapper.chmod(0o755)
    return wrapper


def run_tests(
    name: str, binary: Path, python: Path, tests: Path, hub_url: str, args: argparse.Namespace
) -> Run:
    """One pytest session of the chosen files with `binary` as LLAMA_SERVER_BIN_PATH."""
    folder = SCRATCH / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "cache").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_OUT)}
    env |= {
        "LLAMA_SERVER_BIN_PATH": str(binary),
        "MODEL_ENDPOINT": hub_url,  # llama.cpp's downloader
        "HF_ENDPOINT": hub_url,  # llama-router's (and llama.cpp's older name)
        "LLAMA_CACHE": str(folder / "cache"),  # a fresh cache for every run
        "CONFORMANCE_HUB_URL": hub_url,
        "PORT": str(free_port()),
        "PYTHONPATH": str(PLUGIN_DIR),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    junit = folder / "junit.xml"
    command = [
        str(python), "-m", "pytest", "-p", "conformance_patches", "-v", "-rA",
        f"--junitxml={junit}", "-o", "junit_logging=system-out", f"--timeout={args.test_timeout}",
        *(["-k", args.keyword] if args.keyword else []),
        *(f"unit/{file}" for file in args.files.split(",")),
    ]  # fmt: skip
    log = folder / "pytest.log"
    print(f"== {name}: {binary}\n   log: {log}", flush=True)
    if name == "llama-router" and args.seed_router_cache:
        seed_cache(binary, env)
    started = time.monotonic()
    with log.open("wb") as output:
        subprocess.run(command, cwd=tests, env=env, stdout=output, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    outcomes = read_junit(junit)
    print(f"   {len(outcomes)} tests in {seconds:.0f} s", flush=True)
    return Run(name, str(binary), outcomes, seconds, log)


def previous_run(name: str, tests: set[str]) -> Run | None:
    """The last run of `name`, limited to `tests`: llama-server's results change only with the
    sdist, so a llama-router run alone can be compared with them."""
    folder = SCRATCH / "runs" / name
    outcomes = {t: o for t, o in read_junit(folder / "junit.xml").items() if t in tests}
    if not outcomes:
        return None
    print(f"== {name}: results of the previous run, in {folder}")
    return Run(f"{name} (previous run)", "", outcomes, 0.0, folder / "pytest.log")


def seed_cache(router: Path, env: dict[str, str]) -> None:
    print(f"   --seed-router-cache: pulling {', '.join(CACHE_IDS)}", flush=True)
    for model_id in CACHE_IDS:
        pull = [str(router), "pull", model_id, "--cache-dir", env["LLAMA_CACHE"]]
        done = subprocess.run(pull, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"llama-router pull {model_id} failed: {done.stderr.strip()}")


def summarize(files: list[str], router: Run | None, server: Run | None) -> int:
    here = router.outcomes if router else {}
    there = server.outcomes if server else None
    print()
    print(table(files, here, there))
    for run in (router, server):
        if run is not None:
            print(f"{run.name}: {run.seconds:.0f} s, log {run.log}")
    if router is None or server is None:
        print("\nOne side only: nothing to compare.")
        return 0
    missing = regressions(here, server.outcomes)
    unknown = [test_id for test_id in missing if test_id not in KNOWN_GAPS]
    print(f"\nPass on llama-server, not on llama-router: {len(missing)} ({len(unknown)} unknown)")
    for test_id in missing:
        known = KNOWN_GAPS.get(test_id)
        reason = here[test_id].reason if test_id in here else "did not run"
        print(f"  {test_id}\n      {'known gap: ' + known if known else reason}")
    better = regressions(server.outcomes, here)
    if better:
        print(f"\nPass on llama-router, not on llama-server: {len(better)}")
        for test_id in better:
            theirs = server.outcomes.get(test_id)
            print(f"  {test_id}\n      {theirs.reason if theirs else 'did not run'}")
    return 1 if unknown else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = args.files.split(",")
    reference = None if args.reference == "none" else find_reference(args.reference)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    version = pinned_version(ROOT / "setup.cfg")
    sdist = fetch_sdist(version, SCRATCH / "sdist")
    tests = extract_server_tests(sdist, SCRATCH / "src")
    python = tests_venv(tests, SCRATCH / "venv")
    wrapper = router_wrapper(SCRATCH, args.router_flags)
    with tempfile.TemporaryDirectory(prefix="conformance-models-") as models:
        hub = build_hub(Path(models))
        try:
            router = server = None
            if args.only != "llama-server":
                router = run_tests("llama-router", wrapper, python, tests, hub.url, args)
            if reference and args.only != "llama-router":
                server = run_tests("llama-server", Path(reference), python, tests, hub.url, args)
            elif not reference:
                print("no llama-server found (--reference, $LLAMA_SERVER_BIN): router run only")
        finally:
            hub.close()
    if server is None and router is not None and args.only == "llama-router":
        server = previous_run("llama-server", set(router.outcomes))
    runs = [run for run in (router, server) if run is not None]
    results = {run.name: {test: asdict(o) for test, o in run.outcomes.items()} for run in runs}
    (SCRATCH / "results.json").write_text(json.dumps(results, indent=1))
    return summarize(files, router, server)


if __name__ == "__main__":
    sys.exit(main())
