"""Crashes and exits: a killed worker, a killed router, and what they leave behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import requests

from tests.server import model_worker_pids
from tests.test_scheduling import Call, busy
from tests.tinymodels import EOS_TOKEN
from workers.ring import segments_of

LONG_STREAM = {
    "model": "slow",
    "stream": True,
    "max_tokens": 3000,
    "logit_bias": {str(EOS_TOKEN): -100},
    "messages": [{"role": "user", "content": "go"}],
}


def test_worker_killed_mid_stream(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    reply = requests.post(
        server.url + "/v1/chat/completions", json=LONG_STREAM, stream=True, timeout=60
    )
    lines = reply.iter_lines()
    first = [next(lines) for _ in range(6)]
    assert any(line.startswith(b"data: {") for line in first)
    os.kill(server.model("slow")["pid"], signal.SIGKILL)
    started = time.monotonic()
    rest = [line for line in lines if line.startswith(b"data: ")]
    assert time.monotonic() - started < 5
    last = json.loads(rest[-1][len(b"data: ") :])
    assert last["error"]["code"] == 500
    assert last["error"]["type"] == "server_error"
    assert b"data: [DONE]" not in rest

    entry = server.wait_status("slow", "unloaded")
    assert entry["status"]["failed"] is True
    assert entry["status"]["exit_code"] == -signal.SIGKILL
    assert server.status("tiny-a") == "loaded"  # the others keep serving
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok

    again = server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 3})
    assert again.status_code == 200, again.text
    assert "failed" not in server.model("slow")["status"]


def test_worker_killed_during_non_streamed_request_answers_500(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    server.post("/models/load", {"model": "slow"})
    server.wait_status("slow", "loaded")
    pid = server.model("slow")["pid"]
    body = {**LONG_STREAM, "stream": False}
    killer = _kill_later(pid, 0.5)
    reply = server.post("/v1/chat/completions", body)
    killer.join()
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "server_error"


def test_requests_a_killed_worker_never_picked_up_are_served_by_the_next(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--parallel", "1")
    hog = busy(server, tokens=3000)  # the worker is on this one; the next ones wait in its pipe
    queued = [Call(server, {"model": "slow", "prompt": "x", "max_tokens": 3}) for _ in range(3)]
    time.sleep(0.3)
    os.kill(server.model("slow")["pid"], signal.SIGKILL)
    assert hog.result() == 500  # it was running: sending it again could kill the next worker
    assert [call.result() for call in queued] == [200, 200, 200], [c.text for c in queued]
    assert server.log().count("sending a request to slow again") == 3  # not merely served late
    assert server.log().count("loading slow (pid") == 2


def test_a_killed_worker_fails_every_request_in_its_slots_and_resends_the_rest(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--parallel", "2")
    running = [busy(server, tokens=3000) for _ in range(2)]  # both slots taken
    queued = [Call(server, {"model": "slow", "prompt": "x", "max_tokens": 3}) for _ in range(2)]
    time.sleep(0.3)
    listed = server.get("/slots", params={"model": "slow"}).json()
    assert all(slot["is_processing"] for slot in listed)
    os.kill(server.model("slow")["pid"], signal.SIGKILL)
    assert [call.result() for call in running] == [500, 500]
    assert [call.result() for call in queued] == [200, 200], [c.text for c in queued]
    assert server.log().count("sending a request to slow again") == 2


def test_router_sigkill_takes_workers_down_and_restart_sweeps(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    reply = requests.post(
        server.url + "/v1/chat/completions", json=LONG_STREAM, stream=True, timeout=60
    )
    lines = reply.iter_lines()  # kept: a dropped iterator closes the connection
    assert next(lines).startswith(b"data: {")
    workers = model_worker_pids(server.proc.pid)
    assert workers and segments_of(server.proc.pid)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 3
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in workers), "workers outlived a SIGKILLed router"
    reply.close()

    stale = f"/dev/shm/llama_router_{server.proc.pid}_999"
    Path(stale).write_bytes(b"x")  # as if the resource tracker had not cleaned up either
    foreign = Path("/dev/shm/someone_elses_segment")
    foreign.write_bytes(b"y")
    try:
        router("--models-dir", str(models_dir))
        assert not Path(stale).exists()
        assert foreign.exists()
    finally:
        foreign.unlink()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_later(pid: int, delay: float):

    def kill() -> None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_worker_killed_while_loading_and_while_idle(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    waiting = threading.Thread(
        target=lambda: results.append(
            server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
        )
    )
    results: list[requests.Response] = []
    waiting.start()
    deadline = time.monotonic() + 10
    while True:
        entry = server.model("slow")
        if entry["status"]["value"] == "loading" and "pid" in entry:
            os.kill(entry["pid"], signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "never saw the model loading"
        time.sleep(0.005)
    waiting.join(30)
    assert results[0].status_code == 500
    assert "slow" in results[0].json()["error"]["message"]
    entry = server.wait_status("slow", "unloaded")
    assert entry["status"]["failed"] is True and entry["status"]["exit_code"] == -signal.SIGKILL

    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    os.kill(server.model("tiny-a")["pid"], signal.SIGKILL)
    entry = server.wait_status("tiny-a", "unloaded")
    assert entry["status"]["failed"] is True
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    assert server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2}).ok


def test_a_model_that_cannot_load_answers_500_and_evicts_nothing(
    router, tmp_path: Path, models_dir: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-a.gguf").symlink_to(models_dir / "tiny-a.gguf")
    (models / "garbage.gguf").write_bytes(b"this is not a model at all" * 100)
    (models / "truncated.gguf").write_bytes((models_dir / "tiny-b.gguf").read_bytes()[:5000])
    preset = tmp_path / "p.ini"
    preset.write_text(
        f"[missing]\nmodel = {tmp_path / 'nowhere.gguf'}\n"
        f"[huge]\nmodel = {models_dir / 'tiny-c.gguf'}\nctx-size = 2000000000\n"  # a 1 TB cache
    )
    server = router(
        "--models-dir", str(models), "--models-preset", str(preset), "--models-max", "1"
    )
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    for name, reason in [
        ("garbage", "not a GGUF"),
        ("missing", "cannot read"),
        ("huge", "not enough memory: it needs about 953.7 GiB"),
    ]:
        reply = server.post("/v1/completions", {"model": name, "prompt": "x", "max_tokens": 2})
        assert reply.status_code == 500
        message = reply.json()["error"]["message"]
        assert name in message and reason in message
        assert server.status("tiny-a") == "loaded"  # nothing was evicted for it
    explicit = server.post("/models/load", {"model": "huge"})
    assert explicit.status_code == 500 and "not enough memory" in explicit.text
    assert server.status("tiny-a") == "loaded"
    reply = server.post("/v1/completions", {"model": "truncated", "prompt": "x", "max_tokens": 2})
    assert reply.status_code == 500
    assert "truncated" in reply.json()["error"]["message"]
    assert server.model("truncated")["status"]["failed"] is True
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok


def test_a_hung_worker_is_detected_and_restarted(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--worker-heartbeat-seconds", "2")
    in_flight = busy(server, tokens=3000)
    pid = server.model("slow")["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but answering nothing
    try:
        started = time.monotonic()
        waiting = Call(server, {"model": "slow", "prompt": "x", "max_tokens": 2})
        assert in_flight.result() == 500  # an error, not an endless wait
        assert time.monotonic() - started < 10
        assert "worker of slow stopped answering: killing it" in server.log()
        assert waiting.result() == 200  # never picked up: the next worker serves it
        assert server.model("slow")["pid"] != pid
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    assert server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2}).ok


def test_a_spare_that_waited_long_is_not_taken_for_hung(router, models_dir: Path) -> None:
    server = router(
        "--models-dir", str(models_dir), "--worker-heartbeat-seconds", "2",
        "--sleep-idle-seconds", "1",
    )  # fmt: skip
    time.sleep(3)  # the spare worker has been silent longer than the heartbeat limit
    assert server.post("/models/load", {"model": "tiny-a"}).ok
    server.wait_status("tiny-a", "loaded")
    server.wait_status("tiny-a", "sleeping", timeout=10)
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    time.sleep(1.5)  # the supervisor checks heartbeats every tick
    entry = server.model("tiny-a")
    assert "failed" not in entry["status"], entry
    assert "stopped answering" not in server.log()


def test_a_client_leaving_mid_stream_frees_the_model_at_once(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    reply = requests.post(
        server.url + "/v1/chat/completions", json=LONG_STREAM, stream=True, timeout=60
    )
    lines = reply.iter_lines()
    assert next(lines).startswith(b"data: {")
    reply.close()  # 3000 tokens would keep the worker busy for many seconds
    started = time.monotonic()
    quick = server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
    assert quick.ok and time.monotonic() - started < 2.5


def test_timeout_ends_requests_whose_worker_stays_silent(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--timeout", "1")
    server.post("/models/load", {"model": "slow"})
    pid = server.wait_status("slow", "loaded")["pid"]
    reply = requests.post(
        server.url + "/v1/chat/completions", json=LONG_STREAM, stream=True, timeout=60
    )
    lines = reply.iter_lines()
    assert next(lines).startswith(b"data: {")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        queued = server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
        assert queued.status_code == 503  # in line behind the silent one: busy, not broken
        assert "was busy for 1 s" in queued.json()["error"]["message"]
        last = [line for line in lines if line.startswith(b"data: ")][-1]
        assert "sent nothing for 1 s" in json.loads(last[len(b"data: ") :])["error"]["message"]
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert server.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2}).ok
