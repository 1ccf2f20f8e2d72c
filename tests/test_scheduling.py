"""API.md §6 end to end: every scheduling rule with real workers, waiting on status, not time."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from tests.server import RouterProcess
from tests.tinymodels import EOS_TOKEN

NO_EOS = {str(EOS_TOKEN): -100}


def short(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "x", "max_tokens": 2}


class Call(threading.Thread):
    """One request in the background; remembers its answer and when it finished."""

    def __init__(
        self,
        server: RouterProcess,
        body: dict[str, Any],
        timeout: float = 60,
        conversation: str | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.body, self.timeout = server, body, timeout
        self.headers = {"X-Conversation-Id": conversation} if conversation else {}
        self.status: int | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.text = ""
        self.start()

    def run(self) -> None:
        try:
            reply = requests.post(
                self.server.url + "/v1/completions",
                json=self.body,
                headers=self.headers,
                timeout=self.timeout,
            )
            self.status, self.text = reply.status_code, reply.text
        except BaseException as error:
            self.error = error
        self.finished_at = time.monotonic()

    def result(self) -> int | None:
        self.join(120)
        return self.status


def busy(server: RouterProcess, model: str = "slow", tokens: int = 1000) -> Call:
    """Keep `model` generating for a second or more; returns once it is really in flight."""
    call = Call(server, {"model": model, "prompt": "x", "max_tokens": tokens, "logit_bias": NO_EOS})
    server.wait_status(model, "loaded")
    time.sleep(0.2)  # the request reaches the worker right after the load
    return call


@contextlib.contextmanager
def streaming(server: RouterProcess, model: str) -> Iterator[None]:
    """Keep `model` generating, however fast it is, until the block ends and closes the stream."""
    endless = {**short(model), "max_tokens": 3000, "logit_bias": NO_EOS, "stream": True}
    url = server.url + "/v1/completions"
    with requests.post(url, json=endless, stream=True, timeout=60) as reply:
        lines = reply.iter_lines()  # kept: dropping the generator would close the connection
        assert next(lines)
        yield


def loads_of(server: RouterProcess, model: str) -> int:
    return server.log().count(f"loading {model} (pid")


def test_fifo_order_and_coalescing_cost_one_eviction(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    slow = busy(server)
    b = Call(server, short("tiny-b"))
    time.sleep(0.2)
    cs = [Call(server, short("tiny-c")) for _ in range(3)]
    assert slow.result() == 200
    assert b.result() == 200
    assert [c.result() for c in cs] == [200, 200, 200]
    assert b.finished_at < min(c.finished_at for c in cs)  # B queued first, served first
    assert loads_of(server, "tiny-c") == 1  # three waiters, one load, one eviction
    assert loads_of(server, "tiny-b") == 1


def test_a_busy_model_is_never_evicted(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "2")
    assert server.post("/v1/completions", short("tiny-b")).ok
    slow = busy(server)
    assert server.post("/v1/completions", short("tiny-c")).ok  # evicts idle B, not busy slow
    assert server.status("slow") == "loaded"
    assert server.status("tiny-b") == "unloaded"
    assert slow.result() == 200
    assert json.loads(slow.text)["usage"]["completion_tokens"] == 1000


def test_a_client_that_leaves_the_queue_costs_nothing(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    with streaming(server, "slow"):
        leaver = Call(server, short("tiny-a"), timeout=0.5)
        leaver.join(10)
        assert leaver.error is not None  # it gave up while queued
        server.wait_log("no longer draining slow")
    time.sleep(0.5)
    assert server.status("slow") == "loaded"  # nothing was evicted for nobody
    assert server.status("tiny-a") == "unloaded"
    assert loads_of(server, "tiny-a") == 0


def test_a_fresh_load_is_served_before_the_next_request_can_evict_it(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    first = Call(server, short("tiny-a"))
    second = Call(server, short("tiny-b"))
    assert first.result() == 200, first.text
    assert second.result() == 200, second.text


def test_two_waiters_for_one_idle_slot_are_both_served(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    assert server.post("/v1/completions", short("tiny-a")).ok
    calls = [Call(server, short("tiny-b")), Call(server, short("tiny-c"))]
    assert [call.result() for call in calls] == [200, 200]


def test_load_at_cap_with_everything_busy_is_503(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    slow = busy(server)
    refused = server.post("/models/load", {"model": "tiny-a"})
    assert refused.status_code == 503
    assert refused.json()["error"] == {
        "code": 503,
        "message": "model limit reached, try again later",
        "type": "unavailable_error",
    }
    assert slow.result() == 200


def test_a_request_for_a_stopping_model_waits_and_reloads(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    slow = busy(server, tokens=300)
    assert server.post("/models/unload", {"model": "slow"}).ok
    again = Call(server, short("slow"))
    assert slow.result() == 200  # the worker finished what it had before it exited
    assert again.result() == 200, again.text
    assert loads_of(server, "slow") == 2


def test_unload_kills_after_stop_timeout_and_is_no_failure(
    router, models_dir: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "p.ini"
    preset.write_text("[slow]\nstop-timeout = 1\n")
    server = router("--models-dir", str(models_dir), "--models-preset", str(preset))
    slow = busy(server, tokens=3000)
    started = time.monotonic()
    assert server.post("/models/unload", {"model": "slow"}).ok
    entry = server.wait_status("slow", "unloaded", timeout=10)
    assert time.monotonic() - started < 5
    assert "failed" not in entry["status"]
    assert slow.result() == 500  # its answer could not be finished


def test_load_on_startup_and_too_many_is_a_startup_error(
    router, models_dir: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "p.ini"
    preset.write_text("[tiny-a]\nload-on-startup = true\n[tiny-b]\nload-on-startup = true\n")
    server = router("--models-dir", str(models_dir), "--models-preset", str(preset))
    server.wait_status("tiny-a", "loaded")
    server.wait_status("tiny-b", "loaded")
    assert server.status("tiny-c") == "unloaded"

    failing = RouterProcess(
        ["--models-dir", str(models_dir), "--models-preset", str(preset), "--models-max", "1"],
        tmp_path / "cache2",
    )
    assert failing.proc.wait(30) != 0
    assert "number of models to load on startup (2) exceeds models_max (1)" in failing.log()


def test_sleeping_model_wakes_on_inference_only(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--sleep-idle-seconds", "1")
    assert server.post("/v1/completions", short("tiny-a")).ok
    server.wait_status("tiny-a", "sleeping", timeout=10)
    props = server.get("/props", params={"model": "tiny-a"}).json()
    assert props["is_sleeping"] is True
    for _ in range(3):
        server.get("/health")
        server.get("/props")
        server.get("/models")
    assert server.status("tiny-a") == "sleeping"
    reply = server.post("/v1/completions", short("tiny-a"))
    assert reply.status_code == 200
    assert server.status("tiny-a") in ("loaded", "sleeping")
    assert loads_of(server, "tiny-a") == 1  # woken in its worker, not reloaded


def test_pinned_model_is_never_a_victim_and_ttl_unloads(
    router, models_dir: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "p.ini"
    preset.write_text("[tiny-a]\npin = true\n[tiny-c]\nttl = 1\n")
    server = router(
        "--models-dir", str(models_dir), "--models-preset", str(preset), "--models-max", "2"
    )
    assert server.post("/v1/completions", short("tiny-a")).ok
    assert server.post("/v1/completions", short("tiny-b")).ok
    assert server.post("/v1/completions", short("tiny-a")).ok
    assert server.post("/v1/completions", short("tiny-b")).ok  # tiny-a is now the LRU
    assert server.post("/v1/completions", short("tiny-c")).ok
    assert server.status("tiny-a") == "loaded"  # pinned: tiny-b went instead
    assert server.status("tiny-b") == "unloaded"
    entry = server.wait_status("tiny-c", "unloaded", timeout=10)  # ttl = 1 s
    assert "failed" not in entry["status"]


def test_reload_picks_up_changes(router, models_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "models"
    local.mkdir()
    for name in ("tiny-a", "tiny-b"):
        (local / f"{name}.gguf").symlink_to(models_dir / f"{name}.gguf")
    preset = tmp_path / "p.ini"
    preset.write_text("[tiny-a]\nctx-size = 512\nalias = first\n")
    server = router("--models-dir", str(local), "--models-preset", str(preset))
    assert server.post("/v1/completions", short("first")).ok
    assert server.post("/v1/completions", short("tiny-b")).ok

    (local / "tiny-b.gguf").unlink()
    (local / "tiny-c.gguf").symlink_to(models_dir / "tiny-c.gguf")
    preset.write_text("[tiny-a]\nctx-size = 1024\nalias = first, tiny-c\n")  # tiny-c clashes
    ids = {entry["id"] for entry in server.get("/models", params={"reload": "1"}).json()["data"]}
    assert "tiny-c" in ids
    server.wait_status("tiny-a", "unloaded")  # settings changed
    assert server.model("tiny-a")["aliases"] == ["first"]
    assert "clashes" in server.log()
    reply = server.post("/v1/completions", short("tiny-c"))
    assert reply.status_code == 200
    deadline = time.monotonic() + 10
    while "tiny-b" in {e["id"] for e in server.get("/models").json()["data"]}:
        assert time.monotonic() < deadline, "the vanished model was never dropped"
        time.sleep(0.05)
    assert server.post("/v1/completions", short("tiny-b")).status_code == 400


def test_a_drain_is_called_off_when_its_waiter_leaves(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    with streaming(server, "slow"):
        with contextlib.suppress(requests.Timeout):  # tiny-a's client gives up while slow drains
            requests.post(server.url + "/v1/completions", json=short("tiny-a"), timeout=0.5)
        server.wait_log("no longer draining slow")
    # slow's client has left too: slow is idle, and nobody waits for tiny-a
    started = time.monotonic()
    assert server.post("/v1/completions", short("slow"), timeout=10).ok
    assert time.monotonic() - started < 3  # served, not parked behind a drain for nobody
    assert loads_of(server, "slow") == 1
    assert loads_of(server, "tiny-a") == 0
