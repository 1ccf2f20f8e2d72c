"""The servers a benchmark run compares: llama-router and, when built, llama.cpp's llama-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.server import free_port

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_GUESSES = ("/tmp/llama-ref/build/bin/llama-server",)


def find_reference(explicit: str | None) -> str | None:
    """An explicit path, $LLAMA_SERVER_BIN, a scratch build, or llama-server on PATH."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER_BIN"), *REFERENCE_GUESSES):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("llama-server")


@dataclass
class Target:
    name: str
    command: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    cpus: frozenset[int] | None = None  # the CPUs it may run on (and its children); None: any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 (lives with the process)
        cpus = self.cpus
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except (requests.ConnectionError, requests.Timeout):  # an HTTP process starting
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start; see {log_dir / self.name}.log")

    def log_count(self, log_dir: Path) -> int:
        """How many model loads the server's log shows so far."""
        text = (log_dir / f"{self.name}.log").read_text(errors="replace")
        marker = (
            "llama-router: loading "
            if self.name == "llama-router"
            else "spawning server instance with name="
        )
        return text.count(marker)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def router_target(models_dir: Path, cache_dir: Path, flags: list[str]) -> Target:
    port = free_port()
    command = [sys.executable, "-m", "router", "--port", str(port), "--models-dir", str(models_dir)]
    os.environ["LLAMA_CACHE"] = str(cache_dir)
    return Target("llama-router", [*command, "--log-level", "info", *flags], port)


def _has_amx() -> bool:
    with contextlib.suppress(OSError):
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    return False


def reference_target(binary: str, models_dir: Path, flags: list[str]) -> Target:
    """llama-server in router mode over a models folder."""
    return _llama_server(binary, ["--models-dir", str(models_dir), *flags])


def single_model_reference(binary: str, model: Path, flags: list[str]) -> Target:
    """llama-server serving one model itself, as a GPU host would (its router mode closes a
    client's connection after each answer it relays)."""
    return _llama_server(binary, ["-m", str(model), *flags])


def _llama_server(binary: str, args: list[str]) -> Target:
    """Where the CPU has AMX, llama-server runs with --no-repack: llama-router's default there,
    since this llama.cpp crashes on repacked quantized weights (workers/engines/llama_cpp.py)."""
    port = free_port()
    command = [binary, "--port", str(port), *args, *(["--no-repack"] if _has_amx() else [])]
    return Target("llama-server", command, port)
