"""Parallel slots: one worker decodes several requests together and reuses cached prompts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import RouterProcess
from tests.tinymodels import EOS_TOKEN
from workers.engines import kept_slots
from workers.engines.decoder import Slot

NO_EOS = {str(EOS_TOKEN): -100}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RouterProcess]:
    """Four slots (llama-server's automatic number), a small answer buffer so that a reader
    that stops reading fills its ring soon."""
    cache = tmp_path_factory.mktemp("slots-cache")
    saved = tmp_path_factory.mktemp("saved-slots")
    flags = [
        "--models-dir", str(models_dir),
        "--response-buffer-bytes", "16384",
        "--slot-save-path", str(saved),
        "--metrics",
    ]  # fmt: skip
    server = RouterProcess(flags, cache).wait_ready()
    yield server
    server.stop_and_check()


def complete(server: RouterProcess, model: str, tokens: int, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "x", "max_tokens": tokens, "logit_bias": NO_EOS, **extra}
    reply = server.post("/v1/completions", body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def decodes(server: RouterProcess, model: str) -> float:
    """llama_decode calls so far for `model` (`llamacpp:n_decode_total` of /metrics)."""
    prefix = f'llamacpp:n_decode_total{{model="{model}"}} '
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"/metrics has no {prefix.strip()}")


def test_requests_to_one_model_are_decoded_together(server: RouterProcess) -> None:
    """Four requests of 300 tokens on four slots run at once, and their tokens come out of
    shared decodes: far fewer than the 1200 that one at a time would take. (Counted, not
    timed: on two busy cores four batched streams may take nearly four times one.)"""
    complete(server, "slow", 2)  # loaded
    processing: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            listed = server.get("/slots", params={"model": "slow"}).json()
            processing.append(sum(slot["is_processing"] for slot in listed))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    before = decodes(server, "slow")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: complete(server, "slow", 300), range(4)))
    done.set()
    watcher.join()
    assert len(server.get("/slots", params={"model": "slow"}).json()) == 4
    assert max(processing) == 4
    assert decodes(server, "slow") - before < 600  # one at a time: at least 1200


def test_a_second_turn_decodes_only_what_is_new(server: RouterProcess) -> None:
    first_turn = [{"role": "user", "content": "tell me a story " * 40}]
    body = {"model": "tiny-b", "messages": first_turn, "max_tokens": 8, "temperature": 0}
    first = server.post("/v1/chat/completions", body).json()
    answer = first["choices"][0]["message"]["content"]
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and then?"},
    ]
    second = server.post("/v1/chat/completions", {**body, "messages": second_turn}).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"]  # the first turn is not decoded again
    assert second["timings"]["cache_n"] == cached
    assert second["timings"]["prompt_n"] == second["usage"]["prompt_tokens"] - cached
    again = server.post(
        "/v1/chat/completions", {**body, "messages": second_turn, "cache_prompt": False}
    ).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["choices"][0]["message"] == second["choices"][0]["message"]  # same greedy text


def test_a_reader_that_stops_reading_does_not_stall_the_others(server: RouterProcess) -> None:
    complete(server, "tiny-c", 2)
    body = {"model": "tiny-c", "prompt": "x", "max_tokens": 4000, "logit_bias": NO_EOS}
    with requests.post(
        server.url + "/v1/completions", json={**body, "stream": True}, stream=True, timeout=60
    ) as stalled:
        lines = stalled.iter_lines()
        assert next(lines)  # then nothing more is read: its ring and socket fill up
        time.sleep(1.0)
        started = time.monotonic()
        for _ in range(3):
            assert complete(server, "tiny-c", 200)["usage"]["completion_tokens"] == 200
        assert time.monotonic() - started < 10
        listed = server.get("/slots", params={"model": "tiny-c"}).json()
        assert listed[0]["is_processing"]  # the stalled one still holds its slot


def test_one_request_ends_or_fails_alone(server: RouterProcess) -> None:
    complete(server, "tiny-a", 2)
    results: dict[str, Any] = {}

    def long_one() -> None:
        results["long"] = complete(server, "tiny-a", 1500)

    runner = threading.Thread(target=long_one)
    runner.start()
    body = {"model": "tiny-a", "prompt": "x", "max_tokens": 3000, "stream": True}
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as left:
        assert next(left.iter_lines())  # then its client leaves
    unparsable = {"model": "tiny-a", "prompt": "x", "grammar": 'root ::= "a'}
    bad = server.post("/v1/completions", unparsable)
    assert bad.status_code == 400
    invalid = server.post("/v1/completions", {"model": "tiny-a", "prompt": [99999]})
    assert invalid.status_code == 400
    runner.join(60)
    assert results["long"]["usage"]["completion_tokens"] == 1500
    assert results["long"]["choices"][0]["finish_reason"] == "length"


def test_slots_show_what_each_runs_and_ran(server: RouterProcess) -> None:
    body = {"model": "tiny-b", "prompt": "once upon a time", "max_tokens": 5, "temperature": 0}
    server.post("/v1/completions", body)
    reply = server.post("/v1/completions", body).json()
    listed = server.get("/slots", params={"model": "tiny-b"}).json()
    ran = [slot for slot in listed if slot.get("n_prompt_tokens")]
    assert ran and all(not slot["is_processing"] for slot in listed)
    last = max(ran, key=lambda slot: slot["n_prompt_tokens_cache"])
    assert last["n_prompt_tokens"] == reply["usage"]["prompt_tokens"]
    assert last["n_prompt_tokens_cache"] == reply["timings"]["cache_n"] > 0
    assert last["params"]["temperature"] == 0 and last["params"]["n_predict"] == 5
    # as llama-server, an idle slot shows none of its last task's budget
    assert last["next_token"][0]["n_decoded"] == 0 and last["next_token"][0]["n_remain"] == -1
    assert "once" in last["prompt"] and "time" in last["prompt"]
    free = server.get("/slots", params={"model": "tiny-b", "fail_on_no_slot": "1"})
    assert free.status_code == 200


def test_a_slot_is_saved_erased_and_restored(server: RouterProcess) -> None:
    prompt = {"model": "tiny-c", "prompt": "a story " * 30, "max_tokens": 3, "temperature": 0}
    first = server.post("/v1/completions", {**prompt, "cache_prompt": False}).json()
    slot = _slot_holding(server, "tiny-c", first["usage"]["prompt_tokens"])
    act = f"/slots/{slot}"
    story = {"model": "tiny-c", "filename": "story.bin"}
    saved = server.post(act, story, params={"action": "save"})
    assert saved.status_code == 200, saved.text
    assert saved.json()["filename"] == "story.bin" and saved.json()["n_written"] > 0
    kept = saved.json()["n_saved"]
    erased = server.post(act, {"model": "tiny-c"}, params={"action": "erase"}).json()
    assert erased == {"id_slot": slot, "n_erased": kept}
    restored = server.post(act, story, params={"action": "restore"}).json()
    assert restored["n_restored"] == kept and restored["n_read"] > 0
    again = server.post("/v1/completions", prompt).json()
    assert again["timings"]["cache_n"] == first["usage"]["prompt_tokens"] - 1
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    for action, filename, slot_id in [
        ("save", "../outside.bin", slot),
        ("save", "", slot),
        ("fly", "story.bin", slot),
        ("restore", "story.bin", "x"),
        ("restore", "story.bin", 99),
        ("restore", "missing.bin", slot),
    ]:
        reply = server.post(
            f"/slots/{slot_id}", {"model": "tiny-c", "filename": filename},
            params={"action": action},
        )  # fmt: skip
        assert reply.status_code == 400, (action, filename, slot_id, reply.text)


def _slot_holding(server: RouterProcess, model: str, tokens: int) -> int:
    for slot in server.get("/slots", params={"model": model}).json():
        if slot.get("n_prompt_tokens") == tokens:
            return int(slot["id"])
    raise AssertionError(f"no slot of {model} ran a prompt of {tokens} tokens")


def test_slot_actions_need_a_save_path_and_no_free_slot_is_a_503(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "-np", "1")
    refused = server.post("/slots/0", {"model": "tiny-a", "filename": "a.bin"},
                          params={"action": "save"})  # fmt: skip
    assert refused.status_code == 501 and "--slot-save-path" in refused.json()["error"]["message"]
    body = {
        "model": "slow",
        "prompt": "x",
        "max_tokens": 3000,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as held:
        lines = held.iter_lines()  # kept: dropping the generator would close the connection
        assert next(lines)
        full = server.get("/slots", params={"model": "slow", "fail_on_no_slot": "1"})
        assert full.status_code == 503 and full.json()["error"]["message"] == "no slot available"
        [only] = server.get("/slots", params={"model": "slow"}).json()
        assert only["is_processing"]


def test_a_conversation_resumes_from_its_cache_after_its_model_was_swapped_out(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    first_turn = [{"role": "user", "content": "tell me a long story " * 60}]
    body = {"model": "slow", "messages": first_turn, "max_tokens": 4, "temperature": 0}
    first = server.post("/v1/chat/completions", body).json()
    assert first["timings"]["cache_n"] == 0
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x"}).ok  # slow goes
    server.wait_status("slow", "unloaded")
    kept = server.cache_dir / "slots"
    assert list(kept.glob("slow-*/slot-*.bin"))
    unrelated = {"model": "slow", "prompt": [70, 71, 72], "max_tokens": 2}  # not even a BOS
    other = server.post("/v1/completions", unrelated)
    assert other.json()["timings"]["cache_n"] == 0  # another conversation: nothing loaded for it
    assert list(kept.glob("slow-*/slot-*.bin"))  # and the kept one still waits
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "and then?"},
    ]
    second = server.post("/v1/chat/completions", {**body, "messages": second_turn}).json()
    assert loads_of(server, "slow") == 2  # it really was loaded again, between the turns
    assert second["timings"]["cache_n"] >= first["usage"]["prompt_tokens"]
    assert second["timings"]["prompt_n"] < first["usage"]["prompt_tokens"] / 10  # the new turn
    assert second["timings"]["prompt_ms"] < first["timings"]["prompt_ms"] / 3  # sooner
    assert list(kept.glob("tiny-a-*/slot-*.bin"))  # it went in turn
    assert not list(kept.glob("slow-*/slot-*.bin"))  # brought back


def test_a_kept_cache_is_reused_only_as_far_as_its_file_matches_the_prompt(
    router, models_dir: Path
) -> None:
    """A worker stopped while it kept its slots may leave a cache file beside the token list
    of an older one: the prompt that list invites must not be answered from the file's cells."""
    server = router("--models-dir", str(models_dir), "--models-max", "1", "-np", "1")
    kept_prompt, asked_prompt = [1, *[70] * 200], [1, *[80] * 200]
    body = {"model": "slow", "max_tokens": 8, "temperature": 0, "logit_bias": NO_EOS}
    assert server.post("/v1/completions", {**body, "prompt": kept_prompt}).ok
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x"}).ok  # slow goes
    server.wait_status("slow", "unloaded")
    [token_list] = (server.cache_dir / "slots").glob("slow-*/slot-0.tokens")
    token_list.write_text(json.dumps(asked_prompt))  # as an older cache's list would say
    answer = server.post("/v1/completions", {**body, "prompt": asked_prompt}).json()
    assert loads_of(server, "slow") == 2  # the kept file was offered to the new worker
    assert answer["timings"]["cache_n"] <= 1  # the file shares only the BOS with the prompt
    cold = server.post("/v1/completions", {**body, "prompt": asked_prompt, "cache_prompt": False})
    assert answer["choices"][0]["text"] == cold.json()["choices"][0]["text"]


def test_a_worker_stopped_while_keeping_a_slot_leaves_no_older_token_list(tmp_path: Path) -> None:
    """The list is written after the cache file; the one of the cache before must be gone by
    then, or a stop in between pairs a new file with an old list."""
    class StoppedWhileSaving:
        slots = [Slot(0, cached=[1, 2, 3])]

        def save(self, slot_id: int, path: Path) -> None:
            path.write_bytes(b"a newer cache")
            raise KeyboardInterrupt  # the worker stops here

    (tmp_path / "slot-0.bin").write_bytes(b"an older cache")
    (tmp_path / "slot-0.tokens").write_text("[1, 2]")
    with pytest.raises(KeyboardInterrupt):
        kept_slots.keep(StoppedWhileSaving(), tmp_path, 1 << 30)  # type: ignore[arg-type]
    assert not (tmp_path / "slot-0.tokens").exists()


def loads_of(server: RouterProcess, model: str) -> int:
    return server.log().count(f"loading {model} (pid")


def test_silence_is_counted_from_when_a_slot_takes_the_request(router, models_dir: Path) -> None:
    """A wait in line is not silence: with one slot, a request that waited behind another for
    most of --timeout still has the whole --timeout for its own work. Its own work (1000 tokens,
    about 3 s on `slow`) is well within --timeout, and with the wait before it well beyond."""
    server = router(
        "--models-dir", str(models_dir), "-np", "1", "--timeout", "8",
        "--response-buffer-bytes", "16384",
    )  # fmt: skip
    complete(server, "slow", 2)
    body = {
        "model": "slow",
        "prompt": "x",
        "max_tokens": 4000,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as held:
        lines = held.iter_lines()
        assert next(lines)  # then not read: its ring fills and it keeps the only slot
        waiting = ThreadPoolExecutor(1).submit(complete, server, "slow", 1000)  # not streamed
        time.sleep(6)
    assert waiting.result()["usage"]["completion_tokens"] == 1000


def test_a_number_of_slots_splits_the_context_as_llama_server_does(
    router, models_dir: Path
) -> None:
    """`-np N` given: each slot gets its part of --ctx-size; the automatic four share it."""
    split = router("--models-dir", str(models_dir), "-np", "2", "-c", "1024")
    listed = split.get("/slots", params={"model": "tiny-a"}).json()
    assert [slot["n_ctx"] for slot in listed] == [512, 512]
    props = split.get("/props", params={"model": "tiny-a"}).json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 512
    too_long = split.post("/v1/completions", {"model": "tiny-a", "prompt": "x" * 600})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["n_ctx"] == 512
    shared = router("--models-dir", str(models_dir), "-c", "1024")
    assert {slot["n_ctx"] for slot in shared.get("/slots", params={"model": "tiny-a"}).json()} == {
        1024
    }
    assert shared.post("/v1/completions", {"model": "tiny-a", "prompt": "x" * 600}).ok


def test_a_request_that_ended_no_longer_holds_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """When a request's thread wakes the worker's main thread, the request has already let go
    of its slot: otherwise the next request or command (an unload, a swap) waited for the next
    heartbeat, a whole second, whenever the thread had not quite exited yet."""
    from workers import model as worker

    monkeypatch.setattr(worker, "serve", lambda *args: None)
    seen_on_wakeup: list[int] = []
    woken = threading.Event()

    def wakeup() -> None:
        requests_.start_waiting(1)  # what the main thread does when woken
        seen_on_wakeup.append(len(requests_.running))
        woken.set()

    requests_ = worker._Requests(None, None, None, wakeup)  # type: ignore[arg-type]
    requests_.waiting.append(None)  # type: ignore[arg-type]
    requests_.start_waiting(1)
    assert woken.wait(5)
    assert seen_on_wakeup == [0]
