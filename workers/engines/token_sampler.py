"""A request's sampling, all in llama.cpp: its sampler chain, and its grammar kept apart.

Applying a grammar to every token of a large vocabulary costs more than the decode of a small
model (Gemma's 262,144 tokens: about a third of the speed). So, as llama-server's
common_sampler does, the chain picks a token first and the grammar only checks that one; the
grammar goes over the whole vocabulary only when it refuses it, and the chain picks again.

Even without a grammar, the chain copies every logit into an array of candidates before it
looks at one: a quarter of a millisecond per token for Gemma, an eighth of a decode step of four
streams. At temperature 0 with no penalty that choice is the largest (biased) logit, which
`GreedyPick` reads straight off llama.cpp's logits.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp.llama_cpp as llama_lib
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

PENALTY_LAST_N = 64  # llama-server's --repeat-last-n
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Candidates:
    """Every token of the vocabulary with its logit, as llama.cpp's samplers take them; one per
    decoder, used between two decodes by its thread only."""

    def __init__(self, n_vocab: int) -> None:
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        pointer = ctypes.cast(self._data.ctypes.data, ctypes.POINTER(llama_lib.llama_token_data))
        self._array = llama_lib.llama_token_data_array(pointer, n_vocab, -1, False)

    def pick(self, ctx: Any, index: int, *samplers: Any) -> int:
        """The token the samplers choose, in turn, from the logits of batch position `index`."""
        n_vocab = len(self._ids)
        logits = llama_lib.llama_get_logits_ith(ctx, index)
        self._data["id"] = self._ids
        self._data["logit"] = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        self._data["p"] = 0.0
        self._array.size, self._array.selected, self._array.sorted = n_vocab, -1, False
        for sampler in samplers:
            llama_lib.llama_sampler_apply(sampler, ctypes.byref(self._array))
        return int(self._data["id"][self._array.selected])


class GreedyPick:
    """The greedy chain's token (the first largest logit once biased), without the copy."""

    def __init__(self, bias: list[tuple[int, float]], n_vocab: int) -> None:
        self._n_vocab = n_vocab
        self._ids = np.array([token for token, _ in bias], dtype=np.intp)
        self._bias = np.array([value for _, value in bias], dtype=np.float32)

    def pick(self, ctx: Any, index: int) -> int:
        pointer = llama_lib.llama_get_logits_ith(ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        if not self._ids.size:
            return int(np.argmax(logits))
        # biased in place for the one search and put back as they were, not unbiased: the
        # log-probabilities read these logits next
        kept = logits[self._ids].copy()
        logits[self._ids] += self._bias
        try:
            return int(np.argmax(logits))
        finally:
            logits[self._ids] = kept


class TokenSampler:
    """The chain (logit bias, penalties, top-k, typical, top-p, min-p, temperature, then the
    seeded draw, or greedy at temperature 0) and the grammar; owned and freed by the decoder."""

    def __init__(self, params: dict[str, Any], vocab: Any, n_vocab: int) -> None:
        bias = _logit_bias(params, n_vocab)
        self.chain = _chain(params, bias, n_vocab)
        grammar: LlamaGrammar | None = params.get("grammar")
        self.grammar = None
        if grammar is not None:
            text, root = grammar._grammar.encode(), grammar._root.encode()
            self.grammar = llama_lib.llama_sampler_init_grammar(vocab, text, root)
        # the chain's penalties look back at the tokens it took; without any, nothing does
        greedy = params["temp"] <= 0 and grammar is None and not _penalizes(params)
        self.greedy = GreedyPick(bias, n_vocab) if greedy else None

    def sample(self, ctx: Any, index: int, candidates: Candidates) -> int:
        if self.greedy is not None:
            return self.greedy.pick(ctx, index)
        if self.grammar is None:  # the chain picks and takes the token in one call
            return int(llama_lib.llama_sampler_sample(self.chain, ctx, index))
        token = candidates.pick(ctx, index, self.chain)
        if not self._allows(token):
            token = candidates.pick(ctx, index, self.grammar, self.chain)
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        """The token comes next: the penalties and the grammar go on from it."""
        llama_lib.llama_sampler_accept(self.chain, token)
        if self.grammar is not None:
            llama_lib.llama_sampler_accept(self.grammar, token)

    def free(self) -> None:
        llama_lib.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_lib.llama_sampler_free(self.grammar)

    def _allows(self, token: int) -> bool:
        single = llama_lib.llama_token_data(token, 1.0, 0.0)
        array = llama_lib.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
        llama_lib.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return not math.isinf(single.logit)


def _logit_bias(params: dict[str, Any], n_vocab: int) -> list[tuple[int, float]]:
    """As llama-server does, ids outside the vocabulary are ignored."""
    return [(t, v) for t, v in (params.get("logit_bias") or {}).items() if 0 <= t < n_vocab]


def _penalizes(params: dict[str, Any]) -> bool:
    """Whether llama.cpp's penalties sampler changes any logit (its own test)."""
    repeat, frequency = params["repeat_penalty"], params["frequency_penalty"]
    return not (repeat == 1.0 and frequency == 0.0 and params["presence_penalty"] == 0.0)


def _chain(params: dict[str, Any], bias: list[tuple[int, float]], n_vocab: int) -> Any:
    chain = llama_lib.llama_sampler_chain_init(llama_lib.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_lib.llama_sampler_chain_add(chain, sampler)

    if bias:
        entries = (llama_lib.llama_logit_bias * len(bias))(
            *(llama_lib.llama_logit_bias(token, value) for token, value in bias)
        )
        add(llama_lib.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
    penalties = (params["repeat_penalty"], params["frequency_penalty"], params["presence_penalty"])
    add(llama_lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, *penalties))
    if params["temp"] <= 0:
        add(llama_lib.llama_sampler_init_greedy())
        return chain
    add(llama_lib.llama_sampler_init_top_k(params["top_k"]))
    add(llama_lib.llama_sampler_init_typical(params["typical_p"], 1))
    add(llama_lib.llama_sampler_init_top_p(params["top_p"], 1))
    add(llama_lib.llama_sampler_init_min_p(params["min_p"], 1))
    add(llama_lib.llama_sampler_init_temp(params["temp"]))
    add(llama_lib.llama_sampler_init_dist(int(params.get("seed", llama_lib.LLAMA_DEFAULT_SEED))))
    return chain
