"""The greedy shortcut picks exactly the token llama.cpp's own sampler chain picks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
import numpy as np
import pytest

from tests.test_logprobs import PROMPT, unrepacked_weights
from workers.engines.token_sampler import Candidates, TokenSampler

OUT_OF_VOCAB = 1 << 30
GREEDY = {"temp": 0.0, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}


@pytest.fixture(scope="module")
def llm(models_dir: Path) -> Iterator[llama_cpp.Llama]:
    with unrepacked_weights():
        model = llama_cpp.Llama(str(models_dir / "tiny-a.gguf"), n_ctx=64, verbose=False)
    model.eval(PROMPT)
    yield model
    model.close()


def logits(llm: llama_cpp.Llama) -> np.ndarray:
    pointer = llama_lib.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def chain_choice(llm: llama_cpp.Llama, params: dict[str, Any]) -> int:
    sampler = TokenSampler(params, llm._model.vocab, llm.n_vocab())
    try:
        return int(llama_lib.llama_sampler_sample(sampler.chain, llm._ctx.ctx, -1))
    finally:
        sampler.free()


def shortcut_choice(llm: llama_cpp.Llama, params: dict[str, Any]) -> int:
    sampler = TokenSampler(params, llm._model.vocab, llm.n_vocab())
    try:
        assert sampler.greedy is not None
        return sampler.sample(llm._ctx.ctx, -1, Candidates(llm.n_vocab()))
    finally:
        sampler.free()


def bias_cases(scores: np.ndarray) -> list[dict[int, float]]:
    order = np.argsort(-scores, kind="stable")
    best, second, worst = int(order[0]), int(order[1]), int(order[-1])
    return [
        {},
        {worst: 1000.0},  # the least likely token wins
        {best: float("-inf")},  # the best is banned: the second wins
        {best: -1e-3, second: 0.0},
        {best: 0.0, worst: float("-inf")},  # biases that change nothing that matters
        {worst: 1e9, second: 1e9},  # a tie: the lower id wins, as the chain's first maximum
        {2: 50.0, OUT_OF_VOCAB: 1e9},  # ignored, as llama-server ignores ids outside it
    ]


def test_greedy_shortcut_picks_what_the_chain_picks(llm: llama_cpp.Llama) -> None:
    scores = logits(llm)
    for bias in bias_cases(scores):
        params = {**GREEDY, "logit_bias": bias}
        assert shortcut_choice(llm, params) == chain_choice(llm, params), bias
        assert np.array_equal(logits(llm), scores)  # the biased logits were put back


@pytest.mark.parametrize(
    "change",
    [{"temp": 0.5}, {"repeat_penalty": 1.1}, {"frequency_penalty": 0.5}, {"presence_penalty": 0.5}],
)
def test_the_chain_samples_when_anything_but_the_largest_logit_counts(
    llm: llama_cpp.Llama, change: dict[str, Any]
) -> None:
    params = {**GREEDY, "top_k": 40, "typical_p": 1.0, "top_p": 0.95, "min_p": 0.05, **change}
    sampler = TokenSampler(params, llm._model.vocab, llm.n_vocab())
    try:
        assert sampler.greedy is None
    finally:
        sampler.free()
