"""The token loop: sample with llama-cpp-python, decode UTF-8 incrementally, honour stop strings.

llama-cpp-python's own streaming re-detokenizes the whole completion on every token and can
hold text back indefinitely on byte-level output; this loop does constant work per token,
checks the cancel flag between tokens, and counts exactly what it generated.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from workers.errors import ApiError, ContextExceeded

LONG_PROMPT = 64  # tokens; shorter prompts decode faster than a cancel could matter

SAMPLER_ARGS = (
    "temp",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cancelled: bool = False
    # time.perf_counter() when the prompt's decode began, when it ended, at the last token
    started: float = 0.0
    prompt_done: float = 0.0
    last_token: float = 0.0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def timings(self) -> dict[str, float]:
        """llama-server's `timings`. As there, the first token comes with the prompt's decode,
        so the per-token generation figures count the decode steps after it; no prompt cache
        is reused yet (`cache_n`)."""
        prompt_ms = (self.prompt_done - self.started) * 1e3 if self.prompt_done else 0.0
        predicted_ms = 0.0
        if self.last_token:  # at least a microsecond, as llama-server rounds it
            predicted_ms = max(1e-3, (self.last_token - self.prompt_done) * 1e3)
        steps = max(0, self.completion_tokens - 1)
        return {
            "cache_n": 0,
            "prompt_n": self.prompt_tokens,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / self.prompt_tokens if self.prompt_tokens else 0.0,
            "prompt_per_second": 1e3 / prompt_ms * self.prompt_tokens if prompt_ms else 0.0,
            "predicted_n": self.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / steps if steps else 0.0,
            "predicted_per_second": 1e3 / predicted_ms * steps if predicted_ms else 0.0,
        }


class LogitBias:
    """A logits processor that adds per-token biases (`false` in a request bans a token)."""

    def __init__(self, bias: dict[int, float]) -> None:
        self._tokens = list(bias)
        self._amounts = list(bias.values())

    def __call__(self, _input_ids: Any, scores: Any) -> Any:
        scores[self._tokens] += self._amounts
        return scores


def grammar_for(request: dict[str, Any], vocab: Any) -> LlamaGrammar | None:
    """llama-server's `grammar` / `json_schema`, or OpenAI's `response_format`."""
    try:
        if isinstance(request.get("grammar"), str) and request["grammar"]:
            return _parsed(LlamaGrammar.from_string(request["grammar"], verbose=False), vocab)
        schema = request.get("json_schema")
        response_format = request.get("response_format") or {}
        kind = response_format.get("type") or "text"
        if kind not in ("text", "json_object", "json_schema"):
            message = 'response_format type must be one of "text" or "json_object", but got: '
            raise ApiError(400, message + str(kind))
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema", {})
        elif response_format.get("type") == "json_object":
            schema = response_format.get("schema")
            if schema is None:
                return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if schema is not None:
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            return _parsed(grammar, vocab)
    except ApiError:
        raise
    except Exception as error:  # the schema converter reports bad input with any exception
        raise ApiError(400, f"invalid grammar or schema: {error}") from error
    return None


def _parsed(grammar: LlamaGrammar, vocab: Any) -> LlamaGrammar:
    """The grammar, once llama.cpp has parsed it: llama-cpp-python hands a grammar that does not
    parse to the sampler chain as a null pointer, which crashes the process."""
    text = grammar._grammar
    if "\x00" in text:
        raise ApiError(400, "Failed to parse grammar: it contains a NUL character")
    sampler = llama_lib.llama_sampler_init_grammar(vocab, text.encode(), grammar._root.encode())
    if not sampler:
        raise ApiError(400, "Failed to parse grammar")
    llama_lib.llama_sampler_free(sampler)
    return grammar


def generate(
    llm: llama_cpp.Llama,
    prompt_tokens: list[int],
    params: dict[str, Any],
    cancelled: Callable[[], bool],
    outcome: Outcome,
) -> Iterator[str]:
    """Yield the completion's text piece by piece; `outcome` holds counts and the finish reason."""
    if not prompt_tokens:
        return  # llama-server's answer to an empty prompt: an empty completion
    n_ctx = llm.n_ctx()
    check_context(len(prompt_tokens), n_ctx)
    max_tokens = params.get("max_tokens")
    stops = [stop for stop in params.get("stop", []) if stop]
    n_vocab = llm.n_vocab()
    # as llama-server does, ids outside the vocabulary are ignored
    bias = {t: v for t, v in (params.get("logit_bias") or {}).items() if 0 <= t < n_vocab}
    processors = llama_cpp.LogitsProcessorList([LogitBias(bias)]) if bias else None
    # the seed stays on the Llama object: a request without one must not reuse the last one's
    llm.set_seed(int(params.get("seed", llama_lib.LLAMA_DEFAULT_SEED)))
    sampler = {name: params[name] for name in SAMPLER_ARGS if name in params}
    vocab = llm._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    tokens = llm.generate(
        prompt_tokens, logits_processor=processors, grammar=params.get("grammar"), **sampler
    )
    outcome.started = time.perf_counter()
    first = _decode_prompt(llm, tokens, len(prompt_tokens), cancelled, outcome)
    if first is None:
        return
    outcome.prompt_done = time.perf_counter()
    for token in itertools.chain([first], tokens):
        if cancelled():
            outcome.cancelled = True
            return
        if llama_lib.llama_vocab_is_eog(vocab, token):
            outcome.finish_reason = "stop"
            break
        outcome.completion_tokens += 1
        outcome.last_token = time.perf_counter()
        text = held + decoder.decode(token_piece(vocab, token))
        cut = _first_stop(text, stops)
        if cut is not None:
            if text[:cut]:
                yield text[:cut]
            outcome.finish_reason = "stop"
            return
        keep = _stop_prefix_length(text, stops)
        held = text[len(text) - keep :]
        if len(text) > keep:
            yield text[: len(text) - keep]
        if max_tokens is not None and outcome.completion_tokens >= max_tokens:
            outcome.finish_reason = "length"
            break
        if len(prompt_tokens) + outcome.completion_tokens >= n_ctx - 1:
            outcome.finish_reason = "length"
            break
    rest = held + decoder.decode(b"", final=True)
    if rest:
        yield rest


def check_context(prompt_length: int, n_ctx: int) -> None:
    """llama-server refuses a prompt that leaves no room for a single generated token."""
    if prompt_length >= n_ctx:
        raise ContextExceeded(prompt_length, n_ctx)


class PromptAbort:
    """Lets a cancel stop llama.cpp inside a long prompt's decode. llama.cpp asks the callback
    between graph nodes: too often to leave it on while tokens come one at a time."""

    def __init__(self, llm: llama_cpp.Llama, cancelled: Callable[[], bool]) -> None:
        self._ctx = llm._ctx.ctx
        self._callback = llama_lib.ggml_abort_callback(lambda _data: cancelled())

    def __enter__(self) -> None:
        llama_lib.llama_set_abort_callback(self._ctx, self._callback, None)

    def __exit__(self, *_: object) -> None:
        llama_lib.llama_set_abort_callback(self._ctx, llama_lib.ggml_abort_callback(), None)


def _decode_prompt(
    llm: llama_cpp.Llama,
    tokens: Iterator[int],
    prompt_length: int,
    cancelled: Callable[[], bool],
    outcome: Outcome,
) -> int | None:
    """The first token, or None when the prompt's decode was cancelled or produced nothing."""
    guard = PromptAbort(llm, cancelled) if prompt_length > LONG_PROMPT else nullcontext()
    with guard:
        try:
            return next(tokens)
        except StopIteration:
            return None
        except RuntimeError:
            if not cancelled():
                raise
            outcome.cancelled = True
            return None


def checked_tokens(tokens: list[int], llm: llama_cpp.Llama) -> list[int]:
    """Token ids from a client; llama.cpp aborts the whole process on one outside the vocabulary."""
    n_vocab = llm.n_vocab()
    if any(not 0 <= token < n_vocab for token in tokens):
        message = f"Prompt contains invalid tokens: ids must be between 0 and {n_vocab - 1}"
        raise ApiError(400, message)
    return tokens


def token_piece(vocab: Any, token: int) -> bytes:
    """The token's bytes. (llama-cpp-python's own token_to_piece returns its whole 32-byte
    buffer, NUL padding included.)"""
    buffer = ctypes.create_string_buffer(64)
    length = llama_lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if length < 0:  # a longer piece: the call says how much room it needs
        buffer = ctypes.create_string_buffer(-length)
        length = llama_lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:length]


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(positions) if positions else None


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
