"""The cache dir shared with llama-server: its hub layout is listed and served, downloads are
written in it, and earlier `<cache>/models/` downloads stay listed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fakehub import TINY_REPO as REPO
from tests.fakehub import FakeHub
from tests.server import RouterProcess, free_port
from tests.test_events import EventReader

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REFERENCE = Path(os.environ.get("LLAMA_SERVER_BIN", "/tmp/llama-ref/build/bin/llama-server"))


def lay_out_like_llama_server(
    cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT
) -> Path:
    """What llama-server leaves after `-hf`: blobs named by sha256, snapshot entries that are
    relative symlinks to them, and refs/main naming the commit."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    for path, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        entry = folder / "snapshots" / commit / path
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder


def listed(server: RouterProcess) -> dict[str, dict]:
    return {entry["id"]: entry for entry in server.get("/models").json()["data"]}


def completes(server: RouterProcess, model: str) -> bool:
    reply = server.post("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2})
    return reply.status_code == 200 and reply.json()["model"] == model


def test_llama_server_downloads_are_listed_served_and_removable(
    router, models_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    tiny_a, tiny_b = ((models_dir / f"{name}.gguf").read_bytes() for name in ("tiny-a", "tiny-b"))
    lay_out_like_llama_server(
        cache,
        "acme/vision-GGUF",
        {
            "vision-Q8_0.gguf": tiny_a,
            "mmproj-vision-F16.gguf": b"projector",  # a companion file, no model of its own
            "README.md": b"# vision",
        },
    )
    folder = lay_out_like_llama_server(
        cache, REPO, {"tiny-Q8_0.gguf": tiny_a, "sub/tiny-F16.gguf": tiny_b}
    )
    # a split model is listed once, by its first shard
    lay_out_like_llama_server(
        cache,
        "acme/split-GGUF",
        {"big-Q4_0-00001-of-00002.gguf": tiny_a, "big-Q4_0-00002-of-00002.gguf": b"rest"},
    )
    # an earlier version's download, in `<cache>/models/<name>/` with a manifest
    old = cache / "models" / "acme--old-GGUF--Q4_K_M"
    old.mkdir(parents=True)
    shutil.copy(models_dir / "tiny-c.gguf", old / "old-Q4_K_M.gguf")
    (old / "manifest.json").write_text('{"id": "acme/old-GGUF:Q4_K_M"}')

    server = router("--models-dir", str(tmp_path / "none"))
    models = listed(server)
    cached = {name for name, entry in models.items() if entry["source"] == "cache"}
    assert cached == {
        "acme/vision-GGUF:Q8_0",
        f"{REPO}:Q8_0",
        f"{REPO}:F16",
        "acme/split-GGUF:Q4_0",
        "acme/old-GGUF:Q4_K_M",
    }
    vision = models["acme/vision-GGUF:Q8_0"]["architecture"]["input_modalities"]
    assert vision == ["text", "image"]
    assert models[f"{REPO}:F16"]["can_remove"] is True
    assert completes(server, f"{REPO}:F16")
    assert completes(server, "acme/old-GGUF:Q4_K_M")

    assert server.session_delete(f"{REPO}:F16").json() == {"success": True}
    assert f"{REPO}:F16" not in listed(server)
    assert not (folder / "snapshots" / COMMIT / "sub" / "tiny-F16.gguf").exists()
    blobs = {path.name for path in (folder / "blobs").iterdir()}
    assert blobs == {hashlib.sha256(tiny_a).hexdigest()}  # F16's blob went, Q8_0's stays
    assert completes(server, f"{REPO}:Q8_0")


def test_a_download_is_written_in_the_layout_llama_server_reads(
    router, hub: FakeHub, tmp_path: Path
) -> None:
    hub.add(REPO, "mmproj-tiny-F16.gguf", b"projector")
    server = router("--models-dir", str(tmp_path / "none"), env={"HF_ENDPOINT": hub.url})
    events = EventReader(server)
    assert server.post("/models", {"model": f"{REPO}:q8_0"}).json() == {"success": True}
    events.wait_for(f"{REPO}:Q8_0", "download_finished")

    folder = tmp_path / "cache" / "models--acme--tiny-GGUF"
    commit = hub.commit(REPO)
    assert (folder / "refs" / "main").read_text() == commit
    for name in ("tiny-Q8_0.gguf", "mmproj-tiny-F16.gguf"):
        entry = folder / "snapshots" / commit / name
        blob = hashlib.sha256(hub.files[f"{REPO}/{name}"]).hexdigest()
        assert entry.is_symlink() and os.readlink(entry) == f"../../blobs/{blob}"
        assert entry.read_bytes() == hub.files[f"{REPO}/{name}"]
    # whole blobs only (no file left in progress), and no manifest
    blobs = sorted(hashlib.sha256(data).hexdigest() for data in _repo_files(hub))
    assert sorted(path.name for path in (folder / "blobs").iterdir()) == blobs
    assert sorted(path.name for path in folder.iterdir()) == ["blobs", "refs", "snapshots"]
    entry = listed(server)[f"{REPO}:Q8_0"]
    assert entry["source"] == "cache"
    assert completes(server, f"{REPO}:Q8_0")


def _repo_files(hub: FakeHub) -> list[bytes]:
    return [hub.files[f"{REPO}/{name}"] for name in ("tiny-Q8_0.gguf", "mmproj-tiny-F16.gguf")]


@pytest.mark.skipif(not REFERENCE.exists(), reason="no reference llama-server binary")
def test_llama_server_lists_what_the_router_downloaded(
    router, hub: FakeHub, tmp_path: Path
) -> None:
    server = router("--models-dir", str(tmp_path / "none"), env={"HF_ENDPOINT": hub.url})
    events = EventReader(server)
    server.post("/models", {"model": f"{REPO}:Q8_0"})
    events.wait_for(f"{REPO}:Q8_0", "download_finished")
    port = free_port()
    env = {**os.environ, "LLAMA_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": hub.url}
    reference = subprocess.Popen(
        [str(REFERENCE), "--port", str(port), "--offline"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ids = _reference_ids(port)
    finally:
        reference.terminate()
        reference.wait(10)
    assert f"{REPO}:Q8_0" in ids


def _reference_ids(port: int) -> set[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            reply = requests.get(f"http://127.0.0.1:{port}/models", timeout=2)
            if reply.status_code == 200:
                return {entry["id"] for entry in reply.json()["data"]}
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the reference llama-server did not come up")
