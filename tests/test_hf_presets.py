"""Presets that name their model by `hf-repo`: from the cache, fetched on first load, from a
remote `preset.ini`, and `dedup-cache-models` (llama-server's test_router.py cases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakehub import FakeHub
from tests.server import RouterProcess
from tests.test_hf_cache import lay_out_like_llama_server

MAIN = "acme/stories-GGUF"
DRAFT = "acme/stories-infill-GGUF"
OTHER = "acme/other-GGUF"
PRESET_REPO = "acme/test-preset-ci"
REMOTE_PRESET = b"""[tiny-preset]
hf-repo = acme/stories-GGUF:F32
c = 1024

[stories-test]
hf-repo = acme/other-GGUF
"""


@pytest.fixture
def hub(models_dir: Path) -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.add(MAIN, "stories-F32.gguf", (models_dir / "tiny-a.gguf").read_bytes())
    hub.add(OTHER, "other-Q8_0.gguf", (models_dir / "tiny-b.gguf").read_bytes())
    hub.add(PRESET_REPO, "preset.ini", REMOTE_PRESET)
    yield hub
    hub.close()


def ids(server: RouterProcess, reload: bool = False) -> set[str]:
    query = "?reload=1" if reload else ""
    return {entry["id"] for entry in server.get("/models" + query).json()["data"]}


def test_remote_preset_lists_its_presets_and_loads_one(router, hub: FakeHub) -> None:
    server = router("-hf", PRESET_REPO, env={"HF_ENDPOINT": hub.url})
    assert {"tiny-preset", "stories-test"} <= ids(server)
    assert server.post("/models/load", {"model": "tiny-preset"}).json() == {"success": True}
    entry = server.wait_status("tiny-preset", "loaded")
    assert entry["source"] == "preset"
    assert "--ctx-size" in entry["status"]["args"]
    reply = server.post(
        "/v1/completions", {"model": "stories-test", "prompt": "x", "max_tokens": 2}
    )
    assert reply.status_code == 200, reply.text


def test_preset_hf_repo_is_served_from_the_cache(router, models_dir: Path, tmp_path: Path) -> None:
    tiny = (models_dir / "tiny-a.gguf").read_bytes()
    lay_out_like_llama_server(tmp_path / "cache", MAIN, {"stories-F32.gguf": tiny})
    presets = tmp_path / "presets.ini"
    presets.write_text("[stories]\nhf-repo = acme/stories-GGUF\n\n[missing]\nhf-repo = x/y:Q2_K\n")
    server = router("--models-preset", str(presets), env={"HF_ENDPOINT": "http://127.0.0.1:1"})
    assert {"stories", "missing", f"{MAIN}:F32"} <= ids(server)
    ok = server.post("/v1/completions", {"model": "stories", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    failed = server.post("/models/load", {"model": "missing"})
    assert failed.status_code == 500
    assert failed.json()["error"]["message"].startswith("model name=missing failed to load")


def test_preset_hf_repo_not_in_the_cache_is_fetched_on_first_load(
    router, hub: FakeHub, tmp_path: Path
) -> None:
    presets = tmp_path / "presets.ini"
    presets.write_text(f"[stories]\nhf-repo = {MAIN}:F32\n")
    server = router("--models-preset", str(presets), env={"HF_ENDPOINT": hub.url})
    assert f"{MAIN}:F32" not in ids(server)
    reply = server.post("/v1/completions", {"model": "stories", "prompt": "x", "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert f"{MAIN}:F32" in ids(server)  # now in the cache, for llama-server too


def test_dedup_cache_models_hides_the_cache_entry_a_preset_stands_for(
    router, models_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    tiny = {name: (models_dir / f"{name}.gguf").read_bytes() for name in ("tiny-a", "tiny-b")}
    lay_out_like_llama_server(cache, MAIN, {"stories-F32.gguf": tiny["tiny-a"]})
    lay_out_like_llama_server(cache, DRAFT, {"stories-infill-F32.gguf": tiny["tiny-b"]})
    lay_out_like_llama_server(cache, OTHER, {"other-Q8_0.gguf": tiny["tiny-b"]})
    main_id, draft_id = f"{MAIN}:F32", f"{DRAFT}:F32"
    section = f"[model-dedup]\nhf-repo = {MAIN}\nspec-draft-hf = {DRAFT}\n"
    presets = tmp_path / "dedup.ini"
    presets.write_text(section + "dedup-cache-models = 1\n")
    server = router("--models-preset", str(presets))

    listed = ids(server)
    assert "model-dedup" in listed
    assert main_id not in listed and draft_id not in listed
    assert f"{OTHER}:Q8_0" in listed  # other cache models stay
    # hidden from the list only: it is still served by its id
    reply = server.post("/tokenize", {"model": main_id, "content": "hello"})
    assert reply.status_code == 200, reply.text

    presets.write_text(section)
    listed = ids(server, reload=True)
    assert main_id in listed and draft_id in listed

    presets.write_text("[*]\ndedup-cache-models = 1\n\n" + section)
    listed = ids(server, reload=True)
    assert "model-dedup" in listed
    assert main_id not in listed and draft_id not in listed
