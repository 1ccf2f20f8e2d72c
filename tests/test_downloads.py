"""Downloads through a fake hub on 127.0.0.1: progress, resume, verification, cancel, delete."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakehub import FakeHub
from tests.server import ROOT, RouterProcess
from tests.test_events import EventReader
from tests.test_scheduling import NO_EOS, Call

REPO = "acme/tiny-GGUF"
Q4 = f"{REPO}:Q4_K_M"
Q4_FILE = f"{REPO}/tiny-Q4_K_M.gguf"


@pytest.fixture
def hub(models_dir: Path) -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.add(REPO, "tiny-Q4_K_M.gguf", (models_dir / "tiny-a.gguf").read_bytes())
    hub.add(REPO, "tiny-Q8_0.gguf", (models_dir / "tiny-b.gguf").read_bytes())
    hub.add(REPO, "tiny-IQ4_K_M.gguf", b"not this one")
    hub.add("acme/bad-GGUF", "bad-Q4_K_M.gguf", b"x" * 5000, sha256="0" * 64)
    hub.add("direct", "plain.gguf", (models_dir / "tiny-c.gguf").read_bytes())
    yield hub
    hub.close()


@pytest.fixture
def server(router, hub: FakeHub, models_dir: Path) -> RouterProcess:
    return router("--models-dir", str(models_dir), env={"HF_ENDPOINT": hub.url})


def listed(server: RouterProcess) -> dict[str, dict]:
    return {entry["id"]: entry for entry in server.get("/models").json()["data"]}


def test_download_reports_progress_then_is_listed_and_serves(server, hub: FakeHub) -> None:
    hub.seconds_per_chunk = 0.03
    events = EventReader(server)
    assert server.post("/models", {"model": Q4}).json() == {"success": True}
    entry = listed(server)[Q4]
    assert entry["status"]["value"] == "downloading"
    assert entry["source"] == "cache"
    events.wait_for(Q4, "download_finished")
    kinds = [e["event"] for e in events.events if e["model"] == Q4]
    assert kinds[0] == "model_status" and kinds[-1] == "download_finished"
    progress = [e["data"]["progress"] for e in events.events if e["event"] == "download_progress"]
    assert len(progress) >= 2
    (url,) = progress[-1]
    assert url.endswith(f"/{REPO}/resolve/{hub.commit(REPO)}/tiny-Q4_K_M.gguf")
    dones = [p[url]["done"] for p in progress]
    assert dones == sorted(dones) and dones[-1] == progress[-1][url]["total"] == len(
        hub.files[Q4_FILE]
    )
    entry = listed(server)[Q4]
    assert entry["status"]["value"] == "unloaded"
    assert entry["can_remove"] is True
    reply = server.post("/v1/completions", {"model": Q4, "prompt": "x", "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    assert server.post("/models", {"model": Q4}).status_code == 400  # already present


def test_resume_after_a_failure_fetches_only_the_rest(server, hub: FakeHub) -> None:
    hub.fail_once_after[Q4_FILE] = 200_000
    events = EventReader(server)
    server.post("/models", {"model": Q4})
    failed = events.wait_for(Q4, "download_failed")
    assert "closed" in failed["data"]["message"]
    assert Q4 not in listed(server)
    server.post("/models", {"model": Q4})
    events.wait_for(Q4, "download_finished")
    assert hub.ranges == [(Q4_FILE, None), (Q4_FILE, "bytes=200000-")]
    assert listed(server)[Q4]["status"]["value"] == "unloaded"
    assert server.post("/v1/completions", {"model": Q4, "prompt": "x", "max_tokens": 2}).ok


def test_checksum_mismatch_fails_and_lists_nothing(server, tmp_path: Path) -> None:
    events = EventReader(server)
    server.post("/models", {"model": "acme/bad-GGUF:Q4_K_M"})
    failed = events.wait_for("acme/bad-GGUF:Q4_K_M", "download_failed")
    assert "sha256 mismatch" in failed["data"]["message"]
    assert "acme/bad-GGUF:Q4_K_M" not in listed(server)
    repo = tmp_path / "cache" / "models--acme--bad-GGUF"
    assert not [path for path in repo.rglob("*") if path.is_file()]


def test_cancel_with_unload_keeps_the_partial(
    router, hub: FakeHub, models_dir: Path, tmp_path: Path
) -> None:
    server = router(
        "--models-dir", str(models_dir), "--models-max", "1", env={"HF_ENDPOINT": hub.url}
    )
    assert server.post("/models/load", {"model": "tiny-a"}).ok
    server.wait_status("tiny-a", "loaded")
    hub.seconds_per_chunk = 0.2
    events = EventReader(server)
    server.post("/models", {"model": Q4})
    events.wait_for(Q4, "download_progress")
    assert server.post("/models/unload", {"model": Q4}).json() == {"success": True}
    failed = events.wait_for(Q4, "download_failed")
    assert failed["data"]["message"] == "cancelled"
    assert list((tmp_path / "cache").rglob("blobs/*.downloadInProgress"))
    assert server.status("tiny-a") == "loaded"  # a download takes no slot, evicts nothing


def test_delete_removes_a_cache_model_only(server, tmp_path: Path) -> None:
    events = EventReader(server)
    server.post("/models", {"model": f"{REPO}:Q8_0"})
    events.wait_for(f"{REPO}:Q8_0", "download_finished")
    assert server.post(
        "/v1/completions", {"model": f"{REPO}:Q8_0", "prompt": "x", "max_tokens": 2}
    ).ok
    gone = server.session_delete(f"{REPO}:Q8_0")
    assert gone.json() == {"success": True}
    events.wait_for(f"{REPO}:Q8_0", "model_remove")
    assert f"{REPO}:Q8_0" not in listed(server)
    repo = tmp_path / "cache" / "models--acme--tiny-GGUF"
    assert not [p for p in repo.rglob("*") if p.is_file() and p.parent.name != "refs"]
    assert server.session_delete("tiny-a").status_code == 400
    assert server.session_delete("ghost").status_code == 404


def test_delete_wins_over_a_request_that_arrives_meanwhile(server) -> None:
    events = EventReader(server)
    name = f"{REPO}:Q8_0"
    server.post("/models", {"model": name})
    events.wait_for(name, "download_finished")
    long = {"model": name, "prompt": "x", "max_tokens": 3000, "logit_bias": NO_EOS}
    running = Call(server, long)  # the worker finishes it before it exits
    server.wait_status(name, "loaded")
    time.sleep(0.2)
    deleting = threading.Thread(target=server.session_delete, args=(name,))
    deleting.start()
    time.sleep(0.2)
    late = server.post("/v1/completions", {"model": name, "prompt": "x", "max_tokens": 2})
    assert late.status_code == 400 and "not found" in late.text  # not a reload of its files
    assert running.status is None  # refused at once, not after waiting out the stop
    deleting.join(30)
    assert not deleting.is_alive()
    assert running.result() == 200
    assert name not in listed(server)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": ""}, "non-empty"),
        ({"model": "../../etc/passwd"}, "invalid model name"),
        ({"model": "acme/none-GGUF"}, "model validation failed, unable to download"),
        ({"model": f"{REPO}:Q2_K"}, "model validation failed, unable to download"),
        ({"model": "x", "url": "file:///etc/passwd"}, "url must be"),
        ({"model": "a\x00b", "url": "http://h/x.gguf"}, "invalid model name"),
        ({"model": "tiny-a", "url": "http://127.0.0.1:1/tiny-a.gguf"}, "already exists"),
    ],
)
def test_bad_download_requests(server, body: dict, fragment: str) -> None:
    reply = server.post("/models", body)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_direct_url_download(server, hub: FakeHub) -> None:
    events = EventReader(server)
    server.post("/models", {"model": "plain-one", "url": hub.url + "/direct/direct/plain.gguf"})
    events.wait_for("plain-one", "download_finished")
    assert listed(server)["plain-one"]["source"] == "cache"


def test_pull_command_downloads_into_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "pull", f"{REPO}:Q8_0", "--cache-dir", str(tmp_path)],
        cwd=ROOT,
        env={"HF_ENDPOINT": hub.url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{REPO}:Q8_0 is in" in result.stdout
    (file,) = (tmp_path / "models--acme--tiny-GGUF" / "snapshots").rglob("*.gguf")
    assert file.read_bytes() == hub.files[f"{REPO}/tiny-Q8_0.gguf"]
    failing = subprocess.run(
        [sys.executable, "-m", "router", "pull", "acme/none-GGUF", "--cache-dir", str(tmp_path)],
        cwd=ROOT,
        env={"HF_ENDPOINT": hub.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failing.returncode == 1 and "validation failed" in failing.stderr
