"""Start the real router as a subprocess on a free port, and check it leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from workers.ring import segments_of

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RouterProcess:
    def __init__(self, args: list[str], cache_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cache_dir = cache_dir
        self.log_path = cache_dir / f"router-{self.port}.log"
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        full_env = {**os.environ, "LLAMA_CACHE": str(cache_dir), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "--port", str(self.port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.children: set[int] = set()

    def wait_ready(self, timeout: float = 60.0) -> RouterProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # a connection may wait for an HTTP process that is still starting
            time.sleep(0.05)
        raise TimeoutError(f"router did not come up:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.url + path, json=json, timeout=kwargs.pop("timeout", 60), **kwargs
        )

    def session_delete(self, model_id: str) -> requests.Response:
        return requests.delete(self.url + "/models", params={"model": model_id}, timeout=60)

    def model(self, model_id: str) -> dict[str, Any]:
        for entry in self.get("/models").json()["data"]:
            if entry["id"] == model_id:
                return dict(entry)
        raise KeyError(model_id)

    def status(self, model_id: str) -> str:
        return str(self.model(model_id)["status"]["value"])

    def wait_status(self, model_id: str, value: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.model(model_id)
            if entry["status"]["value"] == value:
                return entry
            time.sleep(0.02)
        raise TimeoutError(f"{model_id} never became {value}: {self.model(model_id)}")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the log never said {text!r}:\n{self.log()}")
            time.sleep(0.02)

    def worker_pids(self) -> set[int]:
        try:
            return {child.pid for child in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the router; return its exit code. Remembers its children for leak checks."""
        self.children |= self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def stop_and_check(self) -> None:
        """Stop the router and fail if any worker process or segment outlived it."""
        self.stop()
        alive, segments = self.leftovers()
        assert not alive, f"worker processes outlived the router: {alive}\n{self.log()}"
        assert not segments, f"shared-memory segments outlived the router: {segments}"

    def leftovers(self, timeout: float = 5.0) -> tuple[list[int], list[str]]:
        """Children still alive and segments still present, after waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [pid for pid in self.children if psutil.pid_exists(pid) and _not_zombie(pid)]
            segments = segments_of(self.proc.pid)
            if (not alive and not segments) or time.monotonic() > deadline:
                return alive, segments
            time.sleep(0.05)


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def model_worker_pids(router_pid: int) -> list[int]:
    """The router's worker processes (spawn children, the spare among them), not its
    resource tracker."""
    try:
        children = psutil.Process(router_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child.pid for child in children if "spawn_main" in " ".join(_cmdline(child))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
