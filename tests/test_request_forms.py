"""Request forms llama-server accepts, answered as it answers them: its tests/unit/
test_completion.py and test_chat_completion.py, in router mode.

Tiny models generate random bytes: these tests look at shapes, counts and statuses."""

from __future__ import annotations

import json
import threading
import time
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


# --- 2. prompt forms ------------------------------------------------------------------------


def test_a_prompt_of_ids_and_texts_is_one_prompt(server: RouterProcess) -> None:
    x, y = tokens(server, "x"), tokens(server, "y")
    mixed = native(server, prompt=[1, 2, 3, "x", 7, "y"])
    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["tokens_evaluated"] == 3 + len(x) + 1 + len(y)
    # only a text that opens the prompt gets a BOS
    opened = native(server, prompt=["x", 7]).json()
    assert opened["tokens_evaluated"] == len(tokens(server, "x", add_special=True)) + 1
    alone = native(server, prompt={"prompt_string": "x"}).json()
    assert alone["tokens_evaluated"] == len(tokens(server, "x", add_special=True))


def test_several_prompts_answer_several_results(server: RouterProcess) -> None:
    ids = tokens(server, "x", add_special=True)
    prompts = [ids, "x", {"prompt_string": "x"}, ["x", 5]]
    reply = native(server, prompt=prompts, logit_bias=NO_EOS)
    assert reply.status_code == 200, reply.text
    results = reply.json()
    assert isinstance(results, list)
    assert [result["index"] for result in results] == [0, 1, 2, 3]
    assert [r["tokens_evaluated"] for r in results] == [len(ids)] * 3 + [len(ids) + 1]
    assert all(r["stop"] is True and r["tokens_predicted"] == 4 for r in results)

    oai = server.post("/v1/completions", {"model": "tiny-a", "prompt": ["a", "b"], "max_tokens": 2})
    assert [choice["index"] for choice in oai.json()["choices"]] == [0, 1]

    streamed = native(server, prompt=["a", "b"], stream=True, logit_bias=NO_EOS)
    events = chunks(streamed)
    assert {event["index"] for event in events} == {0, 1}
    finals = [event for event in events if event["stop"]]
    assert [final["index"] for final in finals] == [0, 1]


def test_empty_and_multimodal_prompts(server: RouterProcess) -> None:
    empty = native(server, prompt=[])
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == '"prompt" must not be empty'
    nothing = native(server, prompt=[[]])
    assert nothing.status_code == 200 and nothing.json()["content"] == ""
    assert native(server).status_code == 400  # no prompt at all
    pixel = (  # a 1x1 PNG, as llama-server's test sends it: one string, not a list
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
    )
    media = native(server, prompt={"prompt_string": "x <__media__>", "multimodal_data": pixel})
    assert media.status_code == 400
    assert "does not support multimodal" in media.json()["error"]["message"]
    assert native(server, prompt="x").status_code == 200  # and the worker lives on


# --- 3. n choices ---------------------------------------------------------------------------


def test_n_choices_on_chat(server: RouterProcess) -> None:
    body = {"model": "tiny-a", "messages": HI, "max_tokens": 3, "n": 2, "logit_bias": NO_EOS}
    reply = server.post("/v1/chat/completions", body).json()
    assert [choice["index"] for choice in reply["choices"]] == [0, 1]
    assert all(choice["finish_reason"] == "length" for choice in reply["choices"])
    assert all(choice["message"]["role"] == "assistant" for choice in reply["choices"])
    assert reply["usage"]["completion_tokens"] == 6

    streamed = server.post("/v1/chat/completions", {**body, "stream": True})
    assert sse_events(streamed)[-1] == "[DONE]"
    events = chunks(streamed)
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["length"]

    for n in (0, 5):
        assert server.post("/v1/chat/completions", {**body, "n": n}).status_code == 400


def test_n_choices_on_completions(server: RouterProcess) -> None:
    body = {"model": "tiny-a", "prompt": ["a", "b"], "max_tokens": 2, "n": 2, "logit_bias": NO_EOS}
    reply = server.post("/v1/completions", body).json()
    assert [choice["index"] for choice in reply["choices"]] == [0, 1, 2, 3]
    assert reply["usage"]["completion_tokens"] == 8
    streamed = chunks(server.post("/v1/completions", {**body, "stream": True}))
    finals = [e["choices"][0]["index"] for e in streamed if e["choices"][0]["finish_reason"]]
    assert finals == [0, 1, 2, 3]
    results = native(server, prompt="x", n_cmpl=2).json()
    assert [result["index"] for result in results] == [0, 1]


# --- 4. continue_final_message --------------------------------------------------------------


def test_continue_final_message(server: RouterProcess) -> None:
    """The tiny models have no template of their own: llama.cpp's chatml renders them."""
    prefill = [*HI, {"role": "assistant", "content": "Wh"}]

    def prompt_tokens(**body: Any) -> int:
        chat = {"model": "tiny-a", "max_tokens": 1, "messages": prefill, **body}
        reply = server.post("/v1/chat/completions", chat)
        assert reply.status_code == 200, reply.text
        return int(reply.json()["usage"]["prompt_tokens"])

    opened = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nWh"
    expected = len(tokens(server, opened, add_special=True))
    assert prompt_tokens(continue_final_message=True, add_generation_prompt=False) == expected
    assert prompt_tokens() == expected  # llama-server continues a trailing assistant message
    closed = prompt_tokens(messages=HI, add_generation_prompt=False)
    assert closed == len(tokens(server, "<|im_start|>user\nhi<|im_end|>\n", add_special=True))

    both = {"model": "tiny-a", "messages": prefill, "continue_final_message": True}
    for refused in ({**both, "add_generation_prompt": True}, both):  # llama-server's default
        reply = server.post("/v1/chat/completions", refused)
        assert reply.status_code == 400
        message = "Cannot set both add_generation_prompt and continue_final_message to true."
        assert reply.json()["error"]["message"] == message
    twice = {"model": "tiny-a", "messages": [*prefill, {"role": "assistant", "content": "x"}]}
    assert server.post("/v1/chat/completions", twice).status_code == 400


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
    several = {"model": "tiny-a", "prompt": ["x", "x" * 5000], "stream": True}
    reply = server.post("/v1/completions", several)  # refused before any prompt is generated
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "exceed_context_size_error"


# --- 6. timings -----------------------------------------------------------------------------


def test_timings_on_answers_and_on_the_last_chunk(server: RouterProcess) -> None:
    body = native(server, prompt="x", logit_bias=NO_EOS, cache_prompt=False).json()
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


# --- 7. a cancelled request -----------------------------------------------------------------


def test_a_request_whose_client_left_frees_the_slot(server: RouterProcess) -> None:
    """llama-server's test_cancel_request, in router mode (`?model=`): a generation without end
    whose client gives up stops, and the model's slot is free again."""
    server.post("/models/load", {"model": "slow"})
    server.wait_status("slow", "loaded")

    def slot() -> dict[str, Any]:
        reply = server.get("/slots", params={"model": "slow"})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()) == 4  # llama-server's automatic number of slots
        return dict(reply.json()[0])

    assert slot()["is_processing"] is False
    body = {"model": "slow", "prompt": "I believe the meaning of life is", "logit_bias": NO_EOS}
    gave_up = threading.Event()

    def impatient() -> None:
        with pytest.raises(requests.exceptions.ReadTimeout):
            server.post("/completion", body, timeout=1.5)
        gave_up.set()

    client = threading.Thread(target=impatient)
    client.start()
    assert _within(1.5, lambda: slot()["is_processing"])
    client.join()
    assert gave_up.is_set()
    assert _within(2.0, lambda: not slot()["is_processing"])
    assert server.post("/completion", {**body, "n_predict": 2}, timeout=10).status_code == 200


def _within(seconds: float, condition: Any) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_completions_without_v1_answers_as_completion(server: RouterProcess) -> None:
    """llama-server's `/completions` is its own `/completion`, not the OpenAI route."""
    body = {"model": "tiny-a", "prompt": "hi", "n_predict": 4, "logit_bias": NO_EOS}
    reply = server.post("/completions", body)
    assert reply.status_code == 200, reply.text
    assert "content" in reply.json() and "choices" not in reply.json()


def test_an_unknown_response_format_is_a_400(server: RouterProcess) -> None:
    body = {"model": "tiny-a", "messages": HI, "max_tokens": 2, "response_format": {"type": "x"}}
    reply = server.post("/v1/chat/completions", body)
    assert reply.status_code == 400
    assert "response_format type must be one of" in reply.json()["error"]["message"]
    text = {**body, "response_format": {"type": "text"}}
    assert server.post("/v1/chat/completions", text).status_code == 200


def test_a_stop_string_is_named_on_completion(server: RouterProcess) -> None:
    """llama-server's stop_type "word" and stopping_word; "eos" and "limit" otherwise."""
    body = {
        "model": "tiny-a",
        "prompt": "x",
        "grammar": 'root ::= "abc" "STOP" "def"',
        "stop": ["zzz", "STOP"],
        "n_predict": 20,
    }
    stopped = server.post("/completion", body).json()
    assert (stopped["content"], stopped["stop_type"], stopped["stopping_word"]) == (
        "abc",
        "word",
        "STOP",
    )
    ended = server.post("/completion", {**body, "stop": []}).json()
    assert (ended["content"], ended["stop_type"], ended["stopping_word"]) == (
        "abcSTOPdef",
        "eos",
        "",
    )
