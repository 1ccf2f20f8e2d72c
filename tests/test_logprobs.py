"""Log-probabilities in OpenAI's and llama-server's shapes, against llama-cpp-python's own
logits for the same tokens."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
import numpy as np
import pytest

from router.bundled import gemma_model

PROMPT = [1, *b"Once upon a time"]  # BOS, then the tiny models' byte tokens
TOLERANCE = 2e-3


def direct_logprobs(model_path: str, prompt: list[int], generated: list[int]) -> np.ndarray:
    """Log-softmax of the logits after each prefix of prompt + generated, one row per
    generated token, computed by llama-cpp-python in this process: the prompt in one decode,
    then each generated token alone, as the worker decodes them."""
    with unrepacked_weights():
        # flash attention, as the worker's `-fa auto` gives on this CPU: it changes Gemma's
        # logits by up to a tenth of a nat
        llm = llama_cpp.Llama(
            model_path, n_ctx=512, flash_attn=True, logits_all=True, verbose=False
        )
    llm.eval(prompt)
    for token in generated[:-1]:
        llm.eval([token])
    scores = np.array(llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(generated)])
    peak = scores.max(axis=1, keepdims=True)
    return scores - peak - np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))


@contextlib.contextmanager
def unrepacked_weights() -> Iterator[None]:
    """As the worker loads a model where llama.cpp uses AMX (workers/engines/llama_cpp.py):
    there, this llama.cpp crashes on a batch of several tokens of repacked weights."""
    default_params = llama_lib.llama_model_default_params

    def params() -> Any:
        chosen = default_params()
        chosen.use_extra_bufts = b"AMX_INT8 = 1" not in llama_lib.llama_print_system_info()
        return chosen

    llama_lib.llama_model_default_params = params
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = default_params


def check_against(expected: np.ndarray, entries: list[dict[str, Any]], top: int) -> None:
    assert len(entries) == len(expected)
    for row, entry in zip(expected, entries, strict=True):
        assert abs(entry["logprob"] - row[entry["id"]]) < TOLERANCE
        best = np.argsort(-row)[:top]
        assert [alt["id"] for alt in entry["top_logprobs"]] == list(best)
        for alt in entry["top_logprobs"]:
            assert abs(alt["logprob"] - row[alt["id"]]) < TOLERANCE
            assert alt["bytes"] == list(alt["token"].encode()) or alt["token"] == ""


def test_n_probs_on_completion_are_the_models_own_log_probabilities(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir))
    body = {"model": "tiny-a", "prompt": PROMPT, "n_predict": 12, "n_probs": 3, "temperature": 0}
    answer = server.post("/completion", body).json()
    entries = answer["completion_probabilities"]
    generated = [entry["id"] for entry in entries]
    assert len(generated) == answer["tokens_predicted"]
    # greedy: the sampled token is the most likely one
    assert all(entry["id"] == entry["top_logprobs"][0]["id"] for entry in entries)
    expected = direct_logprobs(str(models_dir / "tiny-a.gguf"), PROMPT, generated)
    check_against(expected, entries, 3)

    # sampled at a high temperature, the values are still the model's, not the sampler's
    hot = {**body, "temperature": 1.5, "top_k": 5, "seed": 7}
    entries = server.post("/completion", hot).json()["completion_probabilities"]
    generated = [entry["id"] for entry in entries]
    check_against(direct_logprobs(str(models_dir / "tiny-a.gguf"), PROMPT, generated), entries, 3)

    streamed = server.post("/completion", {**body, "stream": True})
    chunks = [
        json.loads(line[6:])
        for line in streamed.content.decode().splitlines()
        if line.startswith("data: ")
    ]
    pieces = [entry for chunk in chunks for entry in chunk.get("completion_probabilities", [])]
    assert [entry["id"] for entry in pieces] == [
        entry["id"] for entry in server.post("/completion", body).json()["completion_probabilities"]
    ]
    assert "completion_probabilities" not in chunks[-1]  # the final chunk, as llama-server
    # and as there, a chunk for every token, even one whose text is not complete yet
    assert all(len(chunk["completion_probabilities"]) == 1 for chunk in chunks[:-1])


def test_chat_logprobs_in_openais_shape_streamed_and_not(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    body = {
        "model": "tiny-b",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = server.post("/v1/chat/completions", body).json()["choices"][0]
    content = whole["logprobs"]["content"]
    assert len(content) == 10
    joined = b"".join(bytes(entry["bytes"]) for entry in content)
    assert joined.decode(errors="replace") == whole["message"]["content"]
    # each token's text is what it added to the answer, so the texts join into it
    assert "".join(entry["token"] for entry in content) == whole["message"]["content"]
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)
    assert all(entry["logprob"] <= 0 for entry in content)

    streamed = server.post("/v1/chat/completions", {**body, "stream": True})
    chunks = [
        json.loads(line[6:])
        for line in streamed.content.decode().splitlines()
        if line.startswith("data: {")
    ]
    pieces = [
        entry
        for chunk in chunks
        for choice in chunk["choices"]
        if choice.get("logprobs")
        for entry in choice["logprobs"]["content"]
    ]
    assert pieces == content

    plain = server.post("/v1/chat/completions", {**body, "logprobs": False, "top_logprobs": None})
    assert plain.json()["choices"][0]["logprobs"] is None
    no_top = server.post("/v1/chat/completions", {**body, "top_logprobs": None}).json()
    assert all(entry["top_logprobs"] == [] for entry in no_top["choices"][0]["logprobs"]["content"])


def test_completions_logprobs_n_in_openais_legacy_shape(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir))
    body = {"model": "tiny-a", "prompt": "abc", "max_tokens": 8, "temperature": 0, "logprobs": 2}
    choice = server.post("/v1/completions", body).json()["choices"][0]
    probs = choice["logprobs"]
    joined = b"".join(bytes(entry["bytes"]) for entry in probs["content"])
    assert joined.decode(errors="replace") == choice["text"]
    assert len(probs["token_logprobs"]) == len(probs["tokens"]) == 8
    assert all(len(top) <= 2 for top in probs["top_logprobs"])
    assert probs["text_offset"] == [
        sum(len(token) for token in probs["tokens"][:i]) for i in range(8)
    ]
    assert [entry["logprob"] for entry in probs["content"]] == probs["token_logprobs"]
    streamed = server.post("/v1/completions", {**body, "stream": True})
    offsets = [
        offset
        for line in streamed.content.decode().splitlines()
        if line.startswith("data: {")
        for choice in json.loads(line[6:])["choices"]
        if choice["logprobs"]
        for offset in choice["logprobs"]["text_offset"]
    ]
    assert offsets == probs["text_offset"]


@pytest.mark.parametrize(
    "extra",
    [
        {"top_logprobs": 2},
        {"logprobs": True, "top_logprobs": 21},
        {"logprobs": True, "top_logprobs": -1},
    ],
)
def test_bad_logprob_requests_answer_400(router, models_dir: Path, extra: dict[str, Any]) -> None:
    server = router("--models-dir", str(models_dir))
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], **extra}
    answer = server.post("/v1/chat/completions", body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_gemma_logprobs_match_its_logits(router) -> None:
    server = router()
    gemma = gemma_model(Path(server.cache_dir) / "bundled").path
    prompt = server.post("/tokenize", {"model": "gemma-3-270m-q4_k_m", "content": "The sky is"})
    tokens = [2, *prompt.json()["tokens"]]  # BOS, as the completion adds it
    body = {
        "model": "gemma-3-270m-q4_k_m",
        "prompt": tokens,
        "n_predict": 3,
        "n_probs": 5,
        "temperature": 0,
    }
    entries = server.post("/completion", body, timeout=120).json()["completion_probabilities"]
    generated = [entry["id"] for entry in entries]
    check_against(direct_logprobs(gemma, tokens, generated), entries, 5)
