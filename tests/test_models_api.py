"""The model table over HTTP: listing, presets and aliases, load/unload, autoload, LRU."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.tinymodels import EOS_TOKEN

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def chat(server, model: str, **params):
    return server.post("/v1/chat/completions", {"model": model, **CHAT, **params})


def test_lists_models_dir_with_entry_shape(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    body = server.get("/v1/models").json()
    assert body["object"] == "list"
    ids = {entry["id"] for entry in body["data"]}
    assert ids == {"tiny-a", "tiny-b", "tiny-c", "slow", "folded"}
    entry = server.model("folded")
    assert entry["object"] == "model"
    assert entry["source"] == "models_dir"
    assert entry["can_remove"] is False
    assert entry["status"]["value"] == "unloaded"
    assert "failed" not in entry["status"]
    assert entry["architecture"] == {"input_modalities": ["text"], "output_modalities": ["text"]}
    assert str(models_dir / "folded" / "model-q8.gguf") in entry["status"]["args"]
    listed, v1 = server.get("/models").json(), server.get("/v1/models").json()
    for entry in listed["data"] + v1["data"]:
        entry.pop("created")  # the second of the listing
    assert listed == v1


def test_presets_merge_settings_and_aliases_resolve(
    router, models_dir: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "presets.ini"
    preset.write_text(
        f"""
[*]
ctx-size = 512

[chatty]
model = {models_dir / "tiny-b.gguf"}
alias = talker, tb
tags = chat, small
c = 1024

[tiny-a]
n-predict = 3

[broken]
ngl = 0
"""
    )
    server = router("--models-dir", str(models_dir), "--models-preset", str(preset), "--seed", "42")
    chatty = server.model("chatty")
    assert chatty["aliases"] == ["talker", "tb"]
    assert chatty["tags"] == ["chat", "small"]
    assert chatty["source"] == "preset"
    args = chatty["status"]["args"]
    assert args[args.index("--ctx-size") + 1] == "1024"  # section beats [*]
    assert args[args.index("--seed") + 1] == "42"  # command line beats everything
    tiny_a = server.model("tiny-a")
    assert tiny_a["source"] == "preset"
    assert "n-predict = 3" in tiny_a["status"]["preset"]
    assert tiny_a["status"]["args"][tiny_a["status"]["args"].index("--ctx-size") + 1] == "512"

    reply = chat(server, "talker")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    assert server.status("chatty") == "loaded"
    # n-predict from the preset limits the answer when the request does not say
    no_eos = {"logit_bias": {str(EOS_TOKEN): -100}}
    native = server.post("/completion", {"model": "tiny-a", "prompt": "x", **no_eos}).json()
    assert native["tokens_predicted"] == 3

    failed = chat(server, "broken")
    assert failed.status_code == 500
    assert "broken" in failed.json()["error"]["message"]


def test_load_and_unload(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    assert server.post("/models/load", {"model": "tiny-a"}).json() == {"success": True}
    entry = server.wait_status("tiny-a", "loaded")
    assert entry["meta"]["n_vocab"] == 259
    assert entry["memory"] > 0
    again = server.post("/models/load", {"model": "tiny-a"})
    assert again.status_code == 400
    assert again.json()["error"]["message"] == "model is already running"
    assert server.post("/models/unload", {"model": "tiny-a"}).json() == {"success": True}
    entry = server.wait_status("tiny-a", "unloaded")
    assert "failed" not in entry["status"]  # an unload we asked for is no failure
    not_running = server.post("/models/unload", {"model": "tiny-a"})
    assert not_running.status_code == 400
    assert server.post("/models/load", {"model": "nope"}).status_code == 404
    assert server.post("/models/unload", {"model": "nope"}).status_code == 400


def test_no_autoload_refuses_then_serves_after_load(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--no-models-autoload")
    refused = chat(server, "tiny-b")
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": 400,
        "message": "model is not loaded",
        "type": "invalid_request_error",
    }
    assert server.status("tiny-b") == "unloaded"
    server.post("/models/load", {"model": "tiny-b"})
    server.wait_status("tiny-b", "loaded")
    assert chat(server, "tiny-b").status_code == 200
    assert server.post("/v1/chat/completions?autoload=true", {"model": "tiny-c", **CHAT}).ok


def test_autoload_query_false_refuses(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    refused = server.post("/v1/chat/completions?autoload=false", {"model": "tiny-a", **CHAT})
    assert refused.status_code == 400
    assert server.status("tiny-a") == "unloaded"


def test_lru_eviction_at_cap_two(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "2")
    assert chat(server, "tiny-a").ok
    assert chat(server, "tiny-b").ok
    assert chat(server, "tiny-a").ok  # tiny-b is now the least recently used
    assert chat(server, "tiny-c").ok
    assert server.status("tiny-a") == "loaded"
    assert server.status("tiny-c") == "loaded"
    assert server.status("tiny-b") == "unloaded"
    assert "failed" not in server.model("tiny-b")["status"]
    running = [
        e for e in server.get("/models").json()["data"] if e["status"]["value"] != "unloaded"
    ]
    assert len(running) == 2


def test_load_at_cap_evicts_the_idle_model(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "1")
    assert chat(server, "tiny-a").ok
    assert server.post("/models/load", {"model": "tiny-b"}).json() == {"success": True}
    server.wait_status("tiny-b", "loaded")
    assert server.status("tiny-a") == "unloaded"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "invalid request"),
        (b'{"model": 5, "messages": []}', 400, "Expected `str | null`, got `int`"),
        (b'{"model": "tiny-a", "messages": "hi"}', 400, "invalid request"),
        (b'{"messages": []}', 400, "model name is missing from the request"),
        (b'{"model": "ghost", "messages": []}', 400, "model 'ghost' not found"),
    ],
)
def test_bad_requests_answer_openai_errors(
    router, models_dir: Path, body, status, fragment
) -> None:
    server = router("--models-dir", str(models_dir))
    reply = server.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["code"] == status
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]
    assert server.status("tiny-a") == "unloaded"  # a bad request costs no model load


def test_unknown_route_and_oversize_body(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--max-body-bytes", "1000")
    missing = server.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    big = server.post(
        "/v1/chat/completions", {"model": "tiny-a", "messages": [], "pad": "x" * 2000}
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == 413


def test_health_and_router_props(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--models-max", "3")
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/v1/health").json() == {"status": "ok"}
    props = server.get("/props").json()
    assert props["role"] == "router"
    assert props["max_instances"] == 3
    assert props["models_autoload"] is True
    assert props["build_info"].startswith("b")
    model_props = server.get("/props", params={"model": "tiny-a"}).json()
    assert model_props["is_sleeping"] is False
    assert model_props["model_path"].endswith("tiny-a.gguf")


def test_router_exit_leaves_nothing(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    assert chat(server, "tiny-a").ok
    assert chat(server, "tiny-b").ok
    assert len(server.worker_pids()) >= 2
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    alive, segments = server.leftovers()
    assert alive == [] and segments == []
