"""Request forms llama-server accepts, answered as it answers them: its tests/unit/
test_completion.py and test_chat_completion.py, in router mode.

Tiny models generate random bytes: these tests look at shapes, counts and statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import RouterProcess
from tests.test_inference import sse_events
from tests.tinymodels import EOS_TOKEN

NO_EOS = [[EOS_TOKEN, False]]
TIMINGS = {
    "cache_n",
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(["--models-dir", str(models_dir)], tmp_path_factory.mktemp("cache"))
    router.wait_ready()
    yield router
    router.stop_and_check()


def tokens(server: RouterProcess, text: str, add_special: bool = False) -> list[int]:
    body = {"model": "tiny-a", "content": text, "add_special": add_special}
    return list(server.post("/tokenize", body).json()["tokens"])


def chunks(reply: requests.Response) -> list[dict[str, Any]]:
    """A stream's JSON events, [DONE] left out."""
    return [json.loads(event) for event in sse_events(reply) if event != "[DONE]"]


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


# --- 6. timings -----------------------------------------------------------------------------


def test_timings_on_answers_and_on_the_last_chunk(server: RouterProcess) -> None:
    body = native(server, prompt="x", logit_bias=NO_EOS).json()
    assert set(body["timings"]) == TIMINGS
    assert body["timings"]["prompt_n"] == body["tokens_evaluated"]
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] == 4
    assert body["timings"]["cache_n"] == 0
    assert all(value >= 0 for value in body["timings"].values())

    events = chunks(native(server, prompt="x", stream=True, logit_bias=NO_EOS))
    # pieces are whole characters: random bytes do not make one per token
    assert ["timings" in event for event in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["timings"]["predicted_n"] == 4
    every = chunks(native(server, prompt="x", stream=True, timings_per_token=True))
    assert all(set(event["timings"]) == TIMINGS for event in every)

    oai = {"model": "tiny-a", "prompt": "x", "max_tokens": 3}
    assert set(server.post("/v1/completions", oai).json()["timings"]) == TIMINGS
    last = chunks(server.post("/v1/completions", {**oai, "stream": True}))[-1]
    assert set(last["timings"]) == TIMINGS
    chat = {"model": "tiny-a", "messages": HI, "max_tokens": 3}
    assert set(server.post("/v1/chat/completions", chat).json()["timings"]) == TIMINGS


def test_timings_per_token_on_a_chat_stream(server: RouterProcess) -> None:
    """llama-server's test_chat_completion_with_timings_per_token."""
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "test"}],
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True},
        "timings_per_token": True,
    }
    events = chunks(server.post("/v1/chat/completions", body))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert "timings" not in events[0]
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:] if e["choices"])
    usage = events[-1]
    assert usage["choices"] == [] and usage["timings"]["predicted_n"] <= 10
    pieces = [e for e in events[1:] if e["choices"] and not e["choices"][0]["finish_reason"]]
    assert all("timings" in piece for piece in pieces)
