"""GET /models/sse: live model events, many subscribers, slow ones cut off."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import requests

from router.events import PING, EventHub
from tests.server import RouterProcess


class EventReader(threading.Thread):
    def __init__(self, server: RouterProcess) -> None:
        super().__init__(daemon=True)
        self.events: list[dict] = []
        self.reply = requests.get(server.url + "/models/sse", stream=True, timeout=60)
        assert self.reply.headers["content-type"].startswith("text/event-stream")
        self.start()

    def run(self) -> None:
        try:
            for line in self.reply.iter_lines():
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))
        except requests.RequestException:
            pass

    def wait_for(
        self, model: str, event: str, status: str | None = None, timeout: float = 20
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.events:
                data = item.get("data") or {}
                wanted = status is None or data.get("status") == status
                if item["model"] == model and item["event"] == event and wanted:
                    return item
            time.sleep(0.02)
        raise TimeoutError(f"no {event} {status} for {model}: {self.events}")


def test_load_and_unload_events_reach_every_subscriber(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    readers = [EventReader(server), EventReader(server)]
    assert server.post("/models/load", {"model": "slow"}).ok
    for reader in readers:
        reader.wait_for("slow", "status_change", "loaded")
    assert server.post("/models/unload", {"model": "slow"}).ok
    for reader in readers:
        reader.wait_for("slow", "status_change", "unloaded")
    first, second = ([e for e in r.events if e["model"] == "slow"] for r in readers)
    assert first == second
    kinds = [(e["event"], (e.get("data") or {}).get("status")) for e in first]
    assert kinds[0] == ("model_status", "loading")
    loaded = kinds.index(("status_change", "loaded"))
    assert all(kind == ("status_change", "loading") for kind in kinds[1:loaded])
    progress = [e["data"]["progress"] for e in first[1:loaded]]
    assert progress and progress[-1]["value"] == 1.0
    assert progress[0]["stages"] == ["text_model"] and progress[0]["current"] == "text_model"
    assert first[loaded]["data"]["info"]["n_vocab"] == 259
    assert kinds[loaded + 1 :] == [("status_change", "unloaded")]
    assert first[-1]["data"]["exit_code"] == 0


def test_reload_event_and_a_stalled_subscriber_does_not_block_others(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir))
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /models/sse HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = EventReader(server)
    started = time.monotonic()
    for _ in range(150):  # thousands of events, far more than the stalled socket can hold
        server.get("/models", params={"reload": "1"})
    assert time.monotonic() - started < 30
    reader.wait_for("*", "models_reload")
    deadline = time.monotonic() + 10
    while sum(e["event"] == "models_reload" for e in reader.events) < 150:
        assert time.monotonic() < deadline, "the live subscriber fell behind"
        time.sleep(0.05)
    assert server.post("/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).ok
    stalled.close()


def test_a_subscriber_that_falls_behind_is_closed_and_the_others_get_everything() -> None:
    async def scenario() -> None:
        hub = EventHub(limit=10)
        stalled, live = hub.subscribe(), hub.subscribe()
        received = []
        for index in range(50):
            hub.publish("m", "status_change", {"n": index})
            received.append(await live.next(1.0))
        assert stalled.closed
        assert await stalled.next(0.1) is None  # its stream ends instead of growing
        assert len(received) == 50 and b'"n":49' in received[-1]
        assert await live.next(0.01) == PING
        hub.close()
        assert await live.next(0.1) is None

    asyncio.run(scenario())
