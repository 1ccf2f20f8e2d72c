"""`GET /metrics`, read with Prometheus's own parser, against what the responses reported."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fakehub import TINY_REPO

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Any, **params: str) -> Samples:
    answer = server.get("/metrics", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(server: Any, model: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    answer = server.post("/v1/chat/completions", {**body, **extra})
    assert answer.status_code == 200, answer.text
    assert answer.headers["server-timing"].startswith("router;dur=")
    return dict(answer.json())


def test_engine_figures_add_up_what_the_responses_reported(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--metrics")
    answers = [chat(server, "tiny-a", "hello there, " * 4) for _ in range(3)]
    streamed = requests.post(
        server.url + "/v1/chat/completions",
        json={
            "model": "tiny-a",
            "messages": [{"role": "user", "content": "a stream"}],
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    )
    assert "router;dur=" in streamed.headers["server-timing"]
    timings = [answer["timings"] for answer in answers]
    last = [line for line in streamed.text.splitlines() if '"timings"' in line][-1]
    timings.append(requests.models.complexjson.loads(last[len("data: ") :])["timings"])

    samples = scrape(server)
    model = {"model": "tiny-a"}
    expected = {
        "llamacpp:prompt_tokens_total": sum(t["prompt_n"] for t in timings),
        "llamacpp:prompt_tokens_cached_total": sum(t["cache_n"] for t in timings),
        "llamacpp:tokens_predicted_total": sum(t["predicted_n"] for t in timings),
    }
    for name, total in expected.items():
        assert value(samples, name, **model) == total, name
    # the same first turn three times: the later ones reuse its prompt
    assert value(samples, "llamacpp:prompt_tokens_cached_total", **model) > 0
    seconds = sum(t["predicted_ms"] for t in timings) / 1e3
    assert abs(value(samples, "llamacpp:tokens_predicted_seconds_total", **model) - seconds) < 1e-3
    assert value(samples, "llamacpp:n_decode_total", **model) >= 8
    assert value(samples, "llamacpp:n_busy_slots_per_decode", **model) >= 1
    assert value(samples, "llamacpp:requests_processing", **model) == 0
    assert value(samples, "llamarouter_model_loads_total", **model) == 1
    assert value(samples, "llamarouter_model_load_seconds_count", **model) == 1
    assert value(samples, "llamarouter_models", status="loaded") == 1
    assert value(samples, "llamarouter_models", status="unloaded") >= 3
    assert value(samples, "llamarouter_queue_wait_seconds_count", **model) == 4
    assert value(samples, "llamarouter_overhead_seconds_count", **model) == 4
    assert value(samples, "llamarouter_time_to_first_token_seconds_count", **model) == 1
    route = {"route": "/v1/chat/completions", "status": "2xx"}
    assert value(samples, "llamarouter_http_request_duration_seconds_count", **route) == 4
    assert value(samples, "llamarouter_model_memory_bytes", **model) > 0
    assert value(samples, "llamarouter_http_processes") == 1

    # llama-server's throughput gauges cover the time since the previous scrape
    assert value(samples, "llamacpp:predicted_tokens_seconds", **model) > 0
    assert value(scrape(server), "llamacpp:predicted_tokens_seconds", **model) == 0

    # one model's page is llama-server's: the same figures, no label
    alone = scrape(server, model="tiny-a")
    assert (
        value(alone, "llamacpp:tokens_predicted_total")
        == expected["llamacpp:tokens_predicted_total"]
    )
    assert not any(name.startswith("llamarouter_") for name, _ in alone)
    text = server.get("/metrics", params={"model": "tiny-a"}).text
    assert "# TYPE llamacpp:n_tokens_max counter\nllamacpp:n_tokens_max " in text  # as there


def test_counters_outlive_the_worker_and_count_evictions_and_deaths(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1", "--metrics")
    first = chat(server, "tiny-a", "one")["usage"]["completion_tokens"]
    chat(server, "tiny-b", "evicts tiny-a")
    server.wait_status("tiny-a", "unloaded")
    second = chat(server, "tiny-a", "two")["usage"]["completion_tokens"]
    os.kill(server.model("tiny-a")["pid"], signal.SIGKILL)
    server.wait_status("tiny-a", "unloaded")

    samples = scrape(server)
    a, b = {"model": "tiny-a"}, {"model": "tiny-b"}
    # a counter never goes down: the figures of earlier workers are kept
    assert value(samples, "llamacpp:tokens_predicted_total", **a) == first + second
    assert value(samples, "llamarouter_model_loads_total", **a) == 2
    assert value(samples, "llamarouter_model_evictions_total", **a) == 1
    assert value(samples, "llamarouter_model_evictions_total", **b) == 1
    assert value(samples, "llamarouter_worker_deaths_total", **a) == 1
    assert value(samples, "llamarouter_worker_deaths_total", **b) == 0
    assert value(samples, "llamarouter_models", status="failed") == 1


def test_requests_in_slots_deferred_ones_and_sessions_are_shown_while_they_last(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "-np", "1", "--metrics")
    long_answer = {
        "model": "slow",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1000,
        "logit_bias": {"2": -100},
        "stream": True,
    }
    headers = {"X-Conversation-Id": "watched"}
    with requests.post(
        server.url + "/v1/chat/completions", json=long_answer, headers=headers, stream=True
    ) as running:
        events = (line for line in running.iter_lines() if line.startswith(b"data: "))
        for _ in range(10):
            next(events)
        behind = threading.Thread(target=server.post, args=("/v1/chat/completions", long_answer))
        behind.start()  # the only slot is taken: this one waits
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(server)
            processing = value(samples, "llamacpp:requests_processing", model="slow")
            deferred = value(samples, "llamacpp:requests_deferred", model="slow")
            gaps = value(samples, "llamarouter_inter_token_seconds_count", model="slow")
            if processing == 1 and deferred == 1 and gaps > 0:
                break
            assert time.monotonic() < deadline, f"processing {processing}, deferred {deferred}"
            time.sleep(0.05)
        assert value(samples, "llamarouter_sessions") == 1
        assert value(samples, "llamarouter_session_bytes") > 0
        requests.delete(server.url + "/v1/stream", params={"conv_id": "watched"}, timeout=10)
    behind.join()


def test_metrics_need_the_key_unless_public_and_are_off_without_the_flag(
    router, models_dir: Path
) -> None:
    keyed = router("--models-dir", str(models_dir), "--metrics", "--api-key", "k1")
    assert keyed.get("/metrics").status_code == 401
    answer = keyed.get("/metrics", headers={"Authorization": "Bearer k1"})
    assert answer.status_code == 200
    assert int(answer.headers["Process-Start-Time-Unix"]) <= time.time()
    public = router(
        "--models-dir", str(models_dir), "--metrics", "--api-key", "k1", "--metrics-public"
    )
    assert public.get("/metrics").status_code == 200
    assert public.get("/v1/chat/completions").status_code == 401
    off = router("--models-dir", str(models_dir))  # as llama-server without --metrics
    answer = off.get("/metrics")
    assert answer.status_code == 501
    assert answer.json()["error"]["type"] == "not_supported_error"


def test_downloaded_bytes_are_counted(router, hub, models_dir: Path) -> None:
    server = router("--metrics", env={"HF_ENDPOINT": hub.url})
    pulled = server.post("/models", {"model": f"{TINY_REPO}:Q4_K_M"})
    assert pulled.status_code == 200, pulled.text
    deadline = time.monotonic() + 30
    size = (models_dir / "tiny-a.gguf").stat().st_size
    while value(scrape(server), "llamarouter_download_bytes_total") < size:
        assert time.monotonic() < deadline, "the download's bytes were never counted"
        time.sleep(0.05)
    assert value(scrape(server), "llamarouter_download_bytes_total") == size


def test_an_embeddings_prompt_is_counted_as_llama_server_counts_it(
    router, models_dir: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "p.ini"
    preset.write_text(
        f"[embedder]\nmodel = {models_dir / 'tiny-c.gguf'}\nembeddings = true\npooling = mean\n"
    )
    server = router("--models-dir", str(models_dir), "--models-preset", str(preset), "--metrics")
    answer = server.post("/v1/embeddings", {"model": "embedder", "input": ["hello", "world"]})
    prompt_tokens = answer.json()["usage"]["prompt_tokens"]
    samples = scrape(server)
    assert value(samples, "llamacpp:prompt_tokens_total", model="embedder") == prompt_tokens
    assert value(samples, "llamacpp:n_decode_total", model="embedder") > 0
    assert value(samples, "llamacpp:tokens_predicted_total", model="embedder") == 0
