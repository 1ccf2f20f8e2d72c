"""Single-model use as llama-server (`-m`, `-hf`, `--hf-file`, `--alias`, `--tags`), and a
request that names no model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fakehub import TINY_REPO as REPO
from tests.fakehub import FakeHub
from tests.server import RouterProcess
from tests.test_hf_cache import lay_out_like_llama_server

UNREACHABLE = "http://127.0.0.1:1"


def entries(server: RouterProcess) -> list[dict]:
    return list(server.get("/v1/models").json()["data"])


def complete(server: RouterProcess, **body: object) -> dict:
    reply = server.post("/v1/completions", {"prompt": "x", "max_tokens": 2, **body})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_model_file_is_the_one_model_and_takes_any_request(
    router, models_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(models_dir / "tiny-a.gguf", tmp_path / "local.gguf")
    server = router("-m", str(tmp_path / "local.gguf"), "--tags", "b, a")
    (entry,) = entries(server)
    # llama-server names it by the path as given, and lists that name as its alias
    assert entry["id"] == str(tmp_path / "local.gguf")
    assert entry["aliases"] == [entry["id"]]
    assert entry["tags"] == ["a", "b"]
    server.wait_status(entry["id"], "loaded")  # loaded at start, as llama-server does
    assert complete(server)["model"] == entry["id"]
    complete(server, model="gpt-4o")  # served: llama-server does not look at the name here
    props = server.get("/props").json()
    assert props["model_alias"] == entry["id"] and "role" not in props


def test_hf_repo_is_downloaded_at_start_and_named_by_its_alias(
    router, hub: FakeHub, tmp_path: Path
) -> None:
    server = router("-hf", f"{REPO}:q8_0", "--alias", "zeta, alpha", env={"HF_ENDPOINT": hub.url})
    (entry,) = entries(server)
    assert entry["id"] == "alpha"  # the first alias in sorted order, as llama-server
    assert entry["aliases"] == ["alpha", "zeta"]
    complete(server, model="zeta")
    snapshot = tmp_path / "cache" / "models--acme--tiny-GGUF" / "snapshots" / hub.commit(REPO)
    assert (snapshot / "tiny-Q8_0.gguf").read_bytes() == hub.files[f"{REPO}/tiny-Q8_0.gguf"]
    assert not (snapshot / "tiny-Q4_K_M.gguf").exists()
    assert "tiny-Q8_0.gguf" in server.log()  # the pull progress bar


def test_hf_file_names_the_file_and_the_repo_is_the_id(router, hub: FakeHub) -> None:
    server = router("--hf-repo", REPO, "--hf-file", "tiny-Q8_0.gguf", env={"HF_ENDPOINT": hub.url})
    (entry,) = entries(server)
    assert entry["id"] == REPO
    assert "tiny-Q8_0.gguf" in " ".join(entry["status"]["args"])


def test_hf_repo_in_the_cache_serves_without_a_hub(
    router, models_dir: Path, tmp_path: Path
) -> None:
    tiny = (models_dir / "tiny-b.gguf").read_bytes()
    lay_out_like_llama_server(tmp_path / "cache", REPO, {"tiny-Q8_0.gguf": tiny})
    server = router("-hf", f"{REPO}:Q8_0", env={"HF_ENDPOINT": UNREACHABLE})
    assert complete(server)["model"] == f"{REPO}:Q8_0"
    offline = router("-hf", f"{REPO}:Q8_0", "--offline", env={"HF_ENDPOINT": UNREACHABLE})
    assert complete(offline)["model"] == f"{REPO}:Q8_0"


def test_hf_repo_neither_on_the_hub_nor_in_the_cache_stops_the_start(tmp_path: Path) -> None:
    server = RouterProcess(["-hf", f"{REPO}:Q8_0"], tmp_path, {"HF_ENDPOINT": UNREACHABLE})
    with pytest.raises(RuntimeError, match="not in the cache"):
        server.wait_ready()
    server.stop()


def test_a_request_without_model_goes_to_the_only_one(router, models_dir: Path, tmp_path: Path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(models_dir / "tiny-a.gguf", alone / "solo.gguf")
    server = router("--models-dir", str(alone))
    assert complete(server)["model"] == "solo"
    # a name that is not there is still an error outside single-model use
    assert server.post("/v1/completions", {"model": "other", "prompt": "x"}).status_code == 400
    assert server.get("/props").json()["role"] == "router"


def test_a_request_without_model_among_several_is_refused(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    reply = server.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "code": 400,
        "message": "model name is missing from the request",
        "type": "invalid_request_error",
    }
