"""Chat, OpenAI completions and llama-server's `/completion`, shaped as those servers shape them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp

from workers.engines.chat_templates import ChatFormatter
from workers.engines.generation import Outcome, checked_tokens, generate, grammar_for
from workers.engines.response import SSE_DONE, Response, sse
from workers.engines.sampling import completion_kwargs, stop_list
from workers.errors import ApiError
from workers.protocol import ModelSettings
from workers.schema import decode_object

CancelCheck = Callable[[], bool]


class Completions:
    def __init__(
        self, llm: llama_cpp.Llama, settings: ModelSettings, formatter: ChatFormatter
    ) -> None:
        self.llm = llm
        self.settings = settings
        self.formatter = formatter

    def _params(self, request: dict[str, Any]) -> dict[str, Any]:
        params = completion_kwargs(request, self.settings, self._bias_tokens)
        params["grammar"] = grammar_for(request, self.llm._model.vocab)
        return params

    def _bias_tokens(self, text: str) -> list[int]:
        # llama-server tokenizes a logit_bias string as plain text: no BOS, no special tokens
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def _prompt_tokens(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.llm.tokenize(prompt.encode(), add_bos=True, special=True)
        if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
            return checked_tokens(list(prompt), self.llm)
        raise ApiError(400, "prompt must be a string, a list of token ids or a list of one string")

    def _chat_tokens(self, request: dict[str, Any]) -> tuple[list[int], list[str]]:
        messages = [_flatten_content(message) for message in request.get("messages") or []]
        try:
            formatted = self.formatter(messages=messages, tools=request.get("tools"))
        except Exception as error:  # a template error is the request's fault
            raise ApiError(400, f"cannot apply the chat template: {error}") from error
        tokens = self.llm.tokenize(
            formatted.prompt.encode(), add_bos=not formatted.added_special, special=True
        )
        return tokens, stop_list(formatted.stop)

    # --- OpenAI chat ----------------------------------------------------------------------------

    def chat(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params = self._params(request)
        tokens, template_stops = self._chat_tokens(request)
        params["stop"] = [*params["stop"], *template_stops]
        outcome = Outcome(prompt_tokens=len(tokens))
        pieces = generate(self.llm, tokens, params, cancelled, outcome)
        head = _head("chatcmpl", "chat.completion", params["model"])
        if not request.get("stream"):
            text = "".join(pieces)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
            return Response.json(
                200,
                {
                    **head,
                    "choices": [choice],
                    "usage": outcome.usage(),
                    "timings": outcome.timings(),
                },
            )
        head["object"] = "chat.completion.chunk"
        include_usage = _include_usage(request)
        timed = _per_token_timings(request)

        def events() -> Iterator[bytes]:
            first = _first(pieces)
            yield sse({**head, "choices": [_delta({"role": "assistant", "content": None})]})
            for piece in first:
                yield sse(timed({**head, "choices": [_delta({"content": piece})]}, outcome))
            if outcome.cancelled:
                return
            last = {**head, "choices": [_delta({}, outcome.finish_reason)]}
            if include_usage:
                yield sse(last)
                last = {**head, "choices": [], "usage": outcome.usage()}
            yield sse({**last, "timings": outcome.timings()})
            yield SSE_DONE

        return Response.stream(events())

    # --- OpenAI completions -------------------------------------------------------------------

    def completions(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params = self._params(request)
        tokens = self._prompt_tokens(request.get("prompt", ""))
        outcome = Outcome(prompt_tokens=len(tokens))
        pieces = generate(self.llm, tokens, params, cancelled, outcome)
        head = _head("cmpl", "text_completion", params["model"])

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        if not request.get("stream"):
            text = "".join(pieces)
            return Response.json(
                200,
                {
                    **head,
                    "choices": [choice(text, outcome.finish_reason)],
                    "usage": outcome.usage(),
                    "timings": outcome.timings(),
                },
            )
        timed = _per_token_timings(request)

        def events() -> Iterator[bytes]:
            for piece in pieces:
                yield sse(timed({**head, "choices": [choice(piece, None)]}, outcome))
            if outcome.cancelled:
                return
            final = {
                **head,
                "choices": [choice("", outcome.finish_reason)],
                "usage": outcome.usage(),
                "timings": outcome.timings(),
            }
            yield sse(final)
            yield SSE_DONE

        return Response.stream(events())

    # --- llama-server /completion ---------------------------------------------------------------

    def native(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params = self._params(request)
        prompt = request.get("prompt", "")
        tokens = self._prompt_tokens(prompt)
        outcome = Outcome(prompt_tokens=len(tokens))
        pieces = generate(self.llm, tokens, params, cancelled, outcome)

        def final(content: str) -> dict[str, Any]:
            return {
                "index": 0,
                "content": content,
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": params["model"],
                "tokens_predicted": outcome.completion_tokens,
                "tokens_evaluated": outcome.prompt_tokens,
                "prompt": prompt if isinstance(prompt, str) else "",
                "truncated": False,
                "stop_type": "limit" if outcome.finish_reason == "length" else "eos",
                "stopping_word": "",
                "tokens_cached": outcome.prompt_tokens + outcome.completion_tokens,
                "timings": outcome.timings(),
            }

        if not request.get("stream"):
            return Response.json(200, final("".join(pieces)))
        timed = _per_token_timings(request)

        def events() -> Iterator[bytes]:
            for piece in pieces:
                chunk = {
                    "index": 0,
                    "content": piece,
                    "tokens": [],
                    "stop": False,
                    "id_slot": 0,
                    "tokens_predicted": outcome.completion_tokens,
                    "tokens_evaluated": outcome.prompt_tokens,
                }
                yield sse(timed(chunk, outcome))
            if not outcome.cancelled:
                yield sse(final(""))  # llama-server ends this stream without [DONE]

        return Response.stream(events())


def _per_token_timings(
    request: dict[str, Any],
) -> Callable[[dict[str, Any], Outcome], dict[str, Any]]:
    """What a streamed piece carries: with `timings_per_token`, the timings so far."""
    if not request.get("timings_per_token"):
        return lambda chunk, _outcome: chunk
    return lambda chunk, outcome: {**chunk, "timings": outcome.timings()}


def _first(pieces: Iterator[str]) -> Iterator[str]:
    """Run the generator up to its first piece now, so that prompt errors answer as plain HTTP
    errors even when a stream has an event to send before the pieces (chat's role chunk)."""
    try:
        first = next(pieces)
    except StopIteration:
        return iter(())

    def chain() -> Iterator[str]:
        yield first
        yield from pieces

    return chain()


def _head(prefix: str, kind: str, model: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "llama-router",
    }


def _delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _include_usage(request: dict[str, Any]) -> bool:
    return bool((request.get("stream_options") or {}).get("include_usage"))


def _flatten_content(message: Any) -> Any:
    """OpenAI content parts become one string: the templates expect text."""
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        texts = [part.get("text", "") for part in message["content"] if isinstance(part, dict)]
        return {**message, "content": "".join(texts)}
    return message
