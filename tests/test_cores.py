"""Several busy models share the cores instead of collapsing each other (the CPU budget)."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from router.control import cores
from router.control.cores import CoreMeter
from tests.server import RouterProcess
from tests.tinymodels import EOS_TOKEN
from workers.cores import CoreTable

NO_EOS = {str(EOS_TOKEN): -100}


@pytest.fixture
def two_slow_models(tmp_path: Path, models_dir: Path) -> Path:
    folder = tmp_path / "slow-models"
    folder.mkdir()
    for name in ("slow-a", "slow-b"):
        (folder / f"{name}.gguf").symlink_to(models_dir / "slow.gguf")
    return folder


def generate(server: RouterProcess, model: str, tokens: int) -> float:
    """Seconds for one answer of exactly `tokens` tokens."""
    started = time.monotonic()
    body = {"model": model, "prompt": "x", "max_tokens": tokens, "logit_bias": NO_EOS}
    reply = server.post("/v1/completions", body, timeout=120)
    assert reply.json()["usage"]["completion_tokens"] == tokens
    return time.monotonic() - started


def threads_while(
    server: RouterProcess, models: list[str], work: Callable[[], object]
) -> set[tuple[str, int]]:
    """Each model's thread share, as /props?model= shows it, sampled while `work` runs."""
    seen: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for model in models:
                props = requests.get(server.url + "/props", params={"model": model}, timeout=10)
                seen.add((model, props.json()["threads"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return seen


def test_two_busy_models_take_turns_on_the_cores_instead_of_collapsing(
    router, two_slow_models: Path
) -> None:
    server = router(
        "--models-dir", str(two_slow_models), "--models-max", "2", "--threads", "2", "-c", "1024"
    )  # fmt: skip
    for model in ("slow-a", "slow-b"):
        generate(server, model, 2)  # loaded, so that load time is not measured below
    alone = sum(generate(server, model, 500) for model in ("slow-a", "slow-b"))
    together: list[float] = []

    def both() -> None:
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda model: generate(server, model, 500), ["slow-a", "slow-b"]))
        together.append(time.monotonic() - started)

    seen = threads_while(server, ["slow-a", "slow-b"], both)
    # on two cores with two threads each they ran several times slower than one after the other
    assert together[0] < 1.6 * alone, (together, alone)
    assert {("slow-a", 1), ("slow-b", 1)} <= seen  # a thread each while both decode
    alone_seen = threads_while(server, ["slow-a"], lambda: generate(server, "slow-a", 500))
    assert ("slow-a", 2) in alone_seen  # alone, a model gets every core
    assert requests.get(server.url + "/props", params={"model": "slow-b"}).json()["threads"] == 0


def test_busy_slots_of_one_model_are_one_busy_worker(router, two_slow_models: Path) -> None:
    server = router("--models-dir", str(two_slow_models), "--models-max", "2", "--threads", "2")
    for model in ("slow-a", "slow-b"):
        generate(server, model, 2)

    def three_and_one() -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda m: generate(server, m, 300), ["slow-a"] * 3 + ["slow-b"]))

    seen = threads_while(server, ["slow-a", "slow-b"], three_and_one)
    assert {("slow-a", 1), ("slow-b", 1)} <= seen  # three slots of slow-a weigh as one worker

    def three() -> None:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda m: generate(server, m, 300), ["slow-a"] * 3))

    assert ("slow-a", 2) in threads_while(server, ["slow-a"], three)


def test_a_core_taken_by_another_program_is_left_to_it(router, two_slow_models: Path) -> None:
    server = router("--models-dir", str(two_slow_models), "--threads", "2")
    generate(server, "slow-a", 2)
    assert ("slow-a", 2) in threads_while(
        server, ["slow-a"], lambda: generate(server, "slow-a", 500)
    )
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.5)  # the router measures other programs' load once a second
        seen = threads_while(server, ["slow-a"], lambda: generate(server, "slow-a", 500))
        assert ("slow-a", 1) in seen and ("slow-a", 2) not in seen, seen
        assert server.get("/props").json()["cores"] == {"budget": 2, "free": 1}
    finally:
        hog.kill()
        hog.wait()
    time.sleep(2.5)
    assert ("slow-a", 2) in threads_while(
        server, ["slow-a"], lambda: generate(server, "slow-a", 500)
    )


def test_a_worker_that_ended_between_two_measures_is_not_another_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unloaded worker's last CPU time is the router's own: counted as another program's,
    it took a core from the models for a whole tick after every exit (a cold load then ran its
    prompt on one thread)."""

    def only_this_process_and_its_children_are_busy() -> float:
        spent = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            spent += usage.ru_utime + usage.ru_stime
        return spent

    monkeypatch.setattr(cores, "_busy_seconds", only_this_process_and_its_children_are_busy)
    table = CoreTable(2)
    meter = CoreMeter(table, 2)
    meter.measure()
    burn = "import time\nend = time.process_time() + 0.8\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # a child that ends, reaped
    meter.measure()
    assert table.free() == 2
