"""Request forms llama-server accepts, answered as it answers them: its tests/unit/
test_completion.py and test_chat_completion.py, in router mode.

Tiny models generate random bytes: these tests look at shapes, counts and statuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import RouterProcess
from tests.tinymodels import EOS_TOKEN

NO_EOS = [[EOS_TOKEN, False]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(["--models-dir", str(models_dir)], tmp_path_factory.mktemp("cache"))
    router.wait_ready()
    yield router
    router.stop_and_check()


def tokens(server: RouterProcess, text: str, add_special: bool = False) -> list[int]:
    body = {"model": "tiny-a", "content": text, "add_special": add_special}
    return list(server.post("/tokenize", body).json()["tokens"])


def native(server: RouterProcess, **body: Any) -> requests.Response:
    return server.post("/completion", {"model": "tiny-a", "n_predict": 4, **body})


# --- 1. logit_bias with strings -------------------------------------------------------------


def test_a_logit_bias_string_biases_every_token_of_its_text(server: RouterProcess) -> None:
    def content(logit_bias: Any) -> str:
        reply = native(server, prompt="x", n_predict=16, temperature=0, logit_bias=logit_bias)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["content"])

    ids = tokens(server, "hello")
    by_ids = content([[token, 100] for token in ids])
    assert by_ids  # greedy among the tokens of "hello" (a SentencePiece "▁" included)
    assert set(by_ids) <= {*"hello", "\u2581", "\ufffd"}
    assert content([["hello", 100]]) == by_ids
    assert content({"hello": 100}) == by_ids
    # "l" is "▁l": banning it leaves h, e and o
    banned = content([["hello", 100], ["l", False]])
    assert banned and set(banned) <= set("heo")
    assert set(content({"hello": 100, "l": False})) <= set("heo")
    by_id = native(server, prompt="x", n_predict=8, logit_bias={str(EOS_TOKEN): False})
    assert by_id.json()["stop_type"] == "limit"
    pairs = native(server, prompt="x", n_predict=8, logit_bias=[[EOS_TOKEN, False]])
    assert pairs.json()["stop_type"] == "limit"


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
