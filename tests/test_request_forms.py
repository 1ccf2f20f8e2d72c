"""Request forms llama-server accepts, answered as it answers them: its tests/unit/
test_completion.py and test_chat_completion.py, in router mode.

Tiny models generate random bytes: these tests look at shapes, counts and statuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import RouterProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(["--models-dir", str(models_dir)], tmp_path_factory.mktemp("cache"))
    router.wait_ready()
    yield router
    router.stop_and_check()


# --- 5. context overflow --------------------------------------------------------------------


def test_a_prompt_longer_than_the_context(server: RouterProcess) -> None:
    long = [{"role": "user", "content": "x" * 5000}]
    body = {"model": "tiny-a", "messages": long}
    for stream in (False, True):
        reply = server.post("/v1/chat/completions", {**body, "stream": stream})
        assert reply.status_code == 400
        assert reply.headers["content-type"] == "application/json"
        error = reply.json()["error"]
        assert error["type"] == "exceed_context_size_error"
        assert error["n_prompt_tokens"] > 5000
        assert error["n_ctx"] == server.model("tiny-a")["meta"]["n_ctx"]
