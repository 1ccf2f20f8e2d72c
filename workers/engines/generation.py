"""The token loop: take a sequence's tokens from the decoder, decode UTF-8 incrementally, honour
stop strings.

llama-cpp-python's own streaming re-detokenizes the whole completion on every token and can
hold text back indefinitely on byte-level output; this loop does constant work per token,
checks the cancel flag between tokens, and counts exactly what it generated. Sampling happens in
the decoder thread, in the request's own llama.cpp sampler chain.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from workers.engines.chat_output import THINK_END, THINK_START
from workers.engines.decoder import Decoder, slot_context
from workers.engines.logprobs import TokenProbs
from workers.engines.token_sampler import TokenSampler
from workers.errors import ApiError, ContextExceeded

# The request's settings /slots shows, under llama-server's names.
SHOWN_PARAMS = {
    "temp": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "max_tokens": "n_predict",
    "stop": "stop",
    "cache_prompt": "cache_prompt",
}


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cancelled: bool = False
    cached: int = 0  # prompt tokens a slot's KV cache already held
    stop_word: str = ""  # the stop string that ended it, if one did
    # time.perf_counter() when the prompt's decode began, when it ended, at the last token
    started: float = 0.0
    prompt_done: float = 0.0
    last_token: float = 0.0
    # each generated token's log-probabilities, when the request asked for them
    probs: list[TokenProbs] = field(default_factory=list)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }

    def timings(self) -> dict[str, float]:
        """llama-server's `timings`. As there, the first token comes with the prompt's decode,
        so the per-token generation figures count the decode steps after it, and the prompt
        figures count only the tokens decoded, not those found in the cache (`cache_n`)."""
        decoded = self.prompt_tokens - self.cached
        prompt_ms = (self.prompt_done - self.started) * 1e3 if self.prompt_done else 0.0
        predicted_ms = 0.0
        if self.last_token:  # at least a microsecond, as llama-server rounds it
            predicted_ms = max(1e-3, (self.last_token - self.prompt_done) * 1e3)
        steps = max(0, self.completion_tokens - 1)
        return {
            "cache_n": self.cached,
            "prompt_n": decoded,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / decoded if decoded else 0.0,
            "prompt_per_second": 1e3 / prompt_ms * decoded if prompt_ms else 0.0,
            "predicted_n": self.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / steps if steps else 0.0,
            "predicted_per_second": 1e3 / predicted_ms * steps if predicted_ms else 0.0,
        }


@dataclass
class ThinkingBudget:
    """llama-server's --reasoning-budget: once the model has thought for `limit` tokens, the
    budget message and the end of the thinking are written for it (0: at once)."""

    limit: int
    closing: list[int]  # the message's tokens, then `</think>`'s
    thinking: bool  # the prompt opened the thinking
    used: int = 0
    seen: str = ""
    done: bool = False

    def at_start(self) -> list[int] | None:
        if self.thinking and self.limit == 0:
            self.done = True
            return self.closing
        return None

    def after(self, piece: str) -> list[int] | None:
        """The tokens to force after this piece of text, if its budget is spent now."""
        if self.done:
            return None
        self.seen += piece
        if not self.thinking:
            lead = self.seen.lstrip()
            if lead.startswith(THINK_START):
                self.thinking = True
            elif not THINK_START.startswith(lead):
                self.done = True  # the answer began without thinking
            return None
        if THINK_END in self.seen:
            self.done = True
            return None
        self.used += 1
        if self.used > self.limit:
            self.done = True
            return self.closing
        return None

    def steering(self, vocab: Any) -> Callable[[int], list[int] | None]:
        """after() for each sampled token, for the decoder to call as it samples."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: self.after(utf8.decode(token_piece(vocab, token)))


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


def checked_grammar(text: str, vocab: Any) -> LlamaGrammar:
    """A GBNF grammar the router built, parsed by llama.cpp as a request's grammar is."""
    return _parsed(LlamaGrammar.from_string(text, verbose=False), vocab)


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
    decoder: Decoder,
    llm: llama_cpp.Llama,
    prompt_tokens: list[int],
    params: dict[str, Any],
    cancelled: Callable[[], bool],
    outcome: Outcome,
) -> Iterator[str]:
    """Yield the completion's text piece by piece; `outcome` holds counts and the finish reason."""
    if not prompt_tokens:
        return  # llama-server's answer to an empty prompt: an empty completion
    n_ctx = slot_context(llm)
    check_context(len(prompt_tokens), n_ctx)
    max_tokens = params.get("max_tokens")
    stops = [stop for stop in params.get("stop", []) if stop]
    vocab = llm._model.vocab
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    sampler = TokenSampler(params, vocab, llm.n_vocab())
    reuse = params.get("cache_prompt", True)
    shown = {name: params[key] for key, name in SHOWN_PARAMS.items() if key in params}
    shown["n_predict"] = -1 if max_tokens is None else max_tokens
    top_probs = params.get("top_probs")
    budget: ThinkingBudget | None = params.get("thinking_budget")
    forced = steer = None
    if budget is not None:
        forced = budget.at_start()
        steer = budget.steering(vocab)
    sequence = decoder.start(
        prompt_tokens, sampler, max_tokens, cancelled, reuse, shown, top_probs, forced, steer
    )
    outcome.started = sequence.started
    try:
        for token, probs in decoder.tokens(sequence):
            if not outcome.prompt_done:
                outcome.prompt_done = sequence.first_token
                outcome.cached = sequence.reused
            # as llama-server, the end-of-generation token counts as a predicted one
            outcome.completion_tokens += 1
            previous = outcome.last_token or outcome.prompt_done
            outcome.last_token = time.perf_counter()
            decoder.counters.predicted(outcome.last_token - previous)
            ends = bool(llama_lib.llama_vocab_is_eog(vocab, token))
            piece = "" if ends else utf8.decode(token_piece(vocab, token))
            if probs is not None:  # with the text it added, so that the texts join into it
                outcome.probs.append(dataclasses.replace(probs, text=piece))
            if ends:
                outcome.finish_reason = "stop"
                break
            text = held + piece
            found = _first_stop(text, stops)
            if found is not None:
                cut, outcome.stop_word = found
                if text[:cut]:
                    yield text[:cut]
                outcome.finish_reason = "stop"
                return
            keep = _stop_prefix_length(text, stops)
            held = text[len(text) - keep :]
            if len(text) > keep:
                yield text[: len(text) - keep]
            elif top_probs is not None:
                yield ""  # as llama-server, a chunk for every token when its probabilities go out
            if max_tokens is not None and outcome.completion_tokens >= max_tokens:
                outcome.finish_reason = "length"
                break
            if len(prompt_tokens) + outcome.completion_tokens >= n_ctx - 1:
                outcome.finish_reason = "length"
                break
            if cancelled():
                break
        else:
            outcome.finish_reason = "length"  # the cache every slot shares was full
        if cancelled():
            outcome.cancelled = True
            return
    finally:
        decoder.close(sequence)
        decoder.counters.add_prompt(outcome.timings())
    unfinished = utf8.decode(b"", final=True)  # the last token's incomplete character
    if unfinished and outcome.probs:
        last = outcome.probs[-1]
        outcome.probs[-1] = dataclasses.replace(last, text=(last.text or "") + unfinished)
    rest = held + unfinished
    if rest:
        yield rest


def check_context(prompt_length: int, n_ctx: int) -> None:
    """llama-server refuses a prompt that leaves no room for a single generated token."""
    if prompt_length >= n_ctx:
        raise ContextExceeded(prompt_length, n_ctx)


def checked_tokens(tokens: list[int], llm: llama_cpp.Llama) -> list[int]:
    """Token ids from a client; llama.cpp aborts the whole process on one outside the vocabulary."""
    n_vocab = llm.n_vocab()
    if any(not 0 <= token < n_vocab for token in tokens):
        message = f"Prompt contains invalid tokens: ids must be between 0 and {n_vocab - 1}"
        raise ApiError(400, message)
    return tokens


def token_piece(vocab: Any, token: int, special: bool = False) -> bytes:
    """The token's bytes, however long. (llama-cpp-python's own token_to_piece returns its
    whole 32-byte buffer, NUL padding included, and its detokenize drops a longer piece.)"""
    buffer = ctypes.create_string_buffer(64)
    length = llama_lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, special)
    if length < 0:  # a longer piece: the call says how much room it needs
        buffer = ctypes.create_string_buffer(-length)
        length = llama_lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, special)
    return buffer.raw[:length]


def detokenize(llm: llama_cpp.Llama, tokens: list[int], special: bool = False) -> str:
    vocab = llm._model.vocab
    text = b"".join(token_piece(vocab, token, special) for token in tokens)
    return text.decode("utf-8", errors="replace")


def _first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Where the first stop string in `text` begins, and which it is."""
    found = [(index, stop) for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
