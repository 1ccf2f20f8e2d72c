"""Chat, OpenAI completions and llama-server's `/completion`, shaped as those servers shape them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib

from workers.engines import logprobs
from workers.engines.chat_output import THINK_END, THINK_START, ChatOutput, after_thinking
from workers.engines.chat_shape import ChatShape, shape_chat
from workers.engines.chat_templates import ChatFormatter
from workers.engines.decoder import Decoder, slot_context
from workers.engines.generation import (
    Outcome,
    ThinkingBudget,
    check_context,
    checked_grammar,
    detokenize,
    generate,
    grammar_for,
    token_piece,
)
from workers.engines.prompts import chat_prompt, completion_prompts
from workers.engines.response import SSE_DONE, Response, sse
from workers.engines.sampling import completion_kwargs, stop_list
from workers.errors import ApiError
from workers.protocol import ModelSettings
from workers.schema import decode_object

CancelCheck = Callable[[], bool]


@dataclass
class Run:
    """One completion: a request makes `n` of each of its prompts, one after the other."""

    index: int  # the choice's (or, on /completion, the result's) index, as llama-server counts
    choice: int  # which of its prompt's `n`
    prompt: list[int]
    outcome: Outcome
    pieces: Iterator[str]
    probs_sent: int = 0  # how many of the outcome's token log-probabilities a chunk carried
    text_sent: int = 0  # characters of the tokens whose log-probabilities were sent

    def new_probs(self) -> list[logprobs.TokenProbs]:
        """The log-probabilities of the tokens behind the piece about to be sent."""
        probs = self.outcome.probs[self.probs_sent :]
        self.probs_sent = len(self.outcome.probs)
        return probs


class Completions:
    def __init__(
        self,
        llm: llama_cpp.Llama,
        decoder: Decoder,
        settings: ModelSettings,
        formatter: ChatFormatter,
    ) -> None:
        self.llm = llm
        self.decoder = decoder
        self.settings = settings
        self.formatter = formatter
        vocab = llm._model.vocab
        self.shapes = logprobs.Shapes(lambda token: token_piece(vocab, token))

    def _params(self, request: dict[str, Any], chat: bool = False) -> dict[str, Any]:
        params = completion_kwargs(request, self.settings, self._bias_tokens)
        params["grammar"] = grammar_for(request, self.llm._model.vocab)
        params["top_probs"] = logprobs.wanted(request, chat)
        return params

    def _bias_tokens(self, text: str) -> list[int]:
        # llama-server tokenizes a logit_bias string as plain text: no BOS, no special tokens
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def _prompts(self, request: dict[str, Any]) -> list[list[int]]:
        has_projector = self.settings.mmproj is not None
        return completion_prompts(request.get("prompt"), self.llm, has_projector)

    def chat_tokens(self, request: dict[str, Any]) -> tuple[list[int], list[str]]:
        tokens, stops, _ = self.render(request)
        return tokens, stops

    def render(self, request: dict[str, Any]) -> tuple[list[int], list[str], str]:
        """The rendered chat's tokens, the template's stop strings, and its text. As
        llama-server: where the vocabulary adds a BOS, one the template wrote is cut from the
        text and the tokens get the vocabulary's; where it adds none, none is added."""
        formatted = chat_prompt(self.formatter, request)
        prompt = formatted.prompt
        vocab = self.llm._model.vocab
        add_bos = bool(llama_lib.llama_vocab_get_add_bos(vocab))
        if add_bos:
            bos = token_piece(vocab, self.llm.token_bos(), special=True).decode(errors="replace")
            if bos and prompt.startswith(bos):
                prompt = prompt[len(bos) :]
        tokens = self.llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
        return tokens, stop_list(formatted.stop), prompt

    def shaped(self, request: dict[str, Any]) -> tuple[dict[str, Any], ChatShape, str | None]:
        """The chat request as this model's template sees it (chat_shape.py)."""
        if self.settings.mmproj is None and _has_media(request.get("messages")):
            # llama-server's answer; silently dropping the picture would answer another question
            raise ApiError(
                500,
                "image input is not supported - hint: if this is unexpected, "
                "you may need to provide the mmproj",
            )
        return shape_chat(request, self.formatter.template, self.settings)

    def _runs(
        self,
        prompts: list[list[int]],
        request: dict[str, Any],
        params: dict[str, Any],
        cancelled: CancelCheck,
    ) -> list[Run]:
        """Every prompt is checked before any is generated, so that one too long fails the
        request at once instead of in the middle of its stream."""
        n_ctx = slot_context(self.llm)
        for prompt in prompts:
            check_context(len(prompt), n_ctx)
        choices = request.get("n_cmpl") or request.get("n") or 1
        runs: list[Run] = []
        for prompt in prompts:
            for choice in range(choices):
                outcome = Outcome(prompt_tokens=len(prompt))
                pieces = generate(self.decoder, self.llm, prompt, params, cancelled, outcome)
                runs.append(Run(len(runs), choice, prompt, outcome, pieces))
        return runs

    def _chat_probs(self, probs: list[logprobs.TokenProbs]) -> dict[str, Any]:
        return {"content": self.shapes.content(probs)}

    # --- OpenAI chat ----------------------------------------------------------------------------

    def prepare_chat(
        self, request: dict[str, Any], cancelled: CancelCheck
    ) -> tuple[dict[str, Any], list[Run], ChatShape]:
        """A chat request's generation arguments, its runs, and how their text is read."""
        request, shape, tool_grammar = self.shaped(request)
        params = self._params(request, chat=True)
        tokens, template_stops, prompt = self.render(request)
        params["stop"] = [*params["stop"], *template_stops]
        thinking = prompt.rstrip().endswith(THINK_START)
        shape.thinking_open = shape.split_thinking and thinking
        if tool_grammar is not None:
            if thinking:  # the call comes once the thinking the prompt opened is closed
                tool_grammar = after_thinking(tool_grammar)
            params["grammar"] = checked_grammar(tool_grammar, self.llm._model.vocab)
        # a request's own grammar might refuse the forced end of thinking; a tool call's allows it
        if tool_grammar is not None or params["grammar"] is None:
            params["thinking_budget"] = self._thinking_budget(request, thinking)
        return params, self._runs([tokens], request, params, cancelled), shape

    def _thinking_budget(self, request: dict[str, Any], thinking: bool) -> ThinkingBudget | None:
        limit = request.get("reasoning_budget_tokens", request.get("thinking_budget_tokens"))
        if limit is None or limit == -1:
            limit = self.settings.reasoning_budget
        if limit < 0:
            return None
        message = request.get("reasoning_budget_message")
        if message is None:
            message = self.settings.reasoning_budget_message
        closing = self.llm.tokenize(f"{message}{THINK_END}".encode(), add_bos=False, special=True)
        return ThinkingBudget(limit, closing, thinking)

    def chat(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params, runs, shape = self.prepare_chat(request, cancelled)
        with_probs = params["top_probs"] is not None
        head = _head("chatcmpl", "chat.completion", params["model"])
        if not request.get("stream"):
            choices = []
            for run, text in _collected(runs):
                output = shape.parse(text)
                choices.append(
                    {
                        "index": run.index,
                        "message": output.message(),
                        "logprobs": self._chat_probs(run.outcome.probs) if with_probs else None,
                        "finish_reason": _finish_reason(run, output),
                    }
                )
            return Response.json(200, {**head, "choices": choices, **_totals(runs)})
        head["object"] = "chat.completion.chunk"
        include_usage = _include_usage(request)
        timed = _per_token_timings(request)
        runs[0].pieces = _first(runs[0].pieces)

        def events() -> Iterator[bytes]:
            for run in runs:
                yield sse(
                    {**head, "choices": [_delta(run, {"role": "assistant", "content": None})]}
                )
                reader = shape.stream()
                for piece in run.pieces:
                    for delta in reader.feed(piece):
                        choice = _delta(run, delta)
                        if with_probs:
                            choice["logprobs"] = self._chat_probs(run.new_probs())
                        yield sse(timed({**head, "choices": [choice]}, run.outcome))
                if run.outcome.cancelled:
                    return
                deltas, output = reader.finish()
                for delta in deltas:
                    yield sse({**head, "choices": [_delta(run, delta)]})
                last = {**head, "choices": [_delta(run, {}, _finish_reason(run, output))]}
                if include_usage:
                    yield sse(last)
                    last = {**head, "choices": [], "usage": run.outcome.usage()}
                yield sse({**last, "timings": run.outcome.timings()})
            yield SSE_DONE

        return Response.stream(events())

    # --- OpenAI completions -------------------------------------------------------------------

    def completions(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params = self._params(request)
        with_probs = params["top_probs"] is not None
        runs = self._runs(self._prompts(request), request, params, cancelled)
        head = _head("cmpl", "text_completion", params["model"])

        def choice(run: Run, text: str, finish_reason: str | None) -> dict[str, Any]:
            probs = None
            if with_probs:
                probs = self.shapes.legacy(run.new_probs(), run.text_sent)
                run.text_sent += sum(len(token) for token in probs["tokens"])
            return {
                "text": text,
                "index": run.index,
                "logprobs": probs,
                "finish_reason": finish_reason,
            }

        if not request.get("stream"):
            choices = [
                choice(run, text, run.outcome.finish_reason) for run, text in _collected(runs)
            ]
            return Response.json(200, {**head, "choices": choices, **_totals(runs)})
        timed = _per_token_timings(request)

        def events() -> Iterator[bytes]:
            for run in runs:
                for piece in run.pieces:
                    yield sse(timed({**head, "choices": [choice(run, piece, None)]}, run.outcome))
                if run.outcome.cancelled:
                    return
                yield sse(
                    {
                        **head,
                        "choices": [choice(run, "", run.outcome.finish_reason)],
                        "usage": run.outcome.usage(),
                        "timings": run.outcome.timings(),
                    }
                )
            yield SSE_DONE

        return Response.stream(events())

    # --- llama-server /completion ---------------------------------------------------------------

    def native(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_object(body)
        params = self._params(request)
        runs = self._runs(self._prompts(request), request, params, cancelled)

        def probabilities(probs: list[logprobs.TokenProbs]) -> dict[str, Any]:
            if params["top_probs"] is None:
                return {}
            return {"completion_probabilities": self.shapes.content(probs)}

        def final(run: Run, content: str) -> dict[str, Any]:
            outcome = run.outcome
            return {
                "index": run.index,
                "content": content,
                "tokens": [],
                "id_slot": 0,
                "stop": True,
                "model": params["model"],
                "tokens_predicted": outcome.completion_tokens,
                "tokens_evaluated": outcome.prompt_tokens,
                "prompt": detokenize(self.llm, run.prompt, special=True),
                "truncated": False,
                "stop_type": _stop_type(outcome),
                "stopping_word": outcome.stop_word,
                # the last token sampled is never decoded, so the cache holds one fewer
                "tokens_cached": outcome.prompt_tokens + max(0, outcome.completion_tokens - 1),
                "timings": outcome.timings(),
            }

        if not request.get("stream"):
            results = [
                {**final(run, text), **probabilities(run.outcome.probs)}
                for run, text in _collected(runs)
            ]
            if len(runs) == 1 and results:  # one completion answers alone, several as a list
                return Response.json(200, results[0])
            return Response.json(200, results)
        timed = _per_token_timings(request)

        def events() -> Iterator[bytes]:
            for run in runs:
                for piece in run.pieces:
                    chunk = {
                        "index": run.index,
                        "content": piece,
                        "tokens": [],
                        "stop": False,
                        "id_slot": 0,
                        "tokens_predicted": run.outcome.completion_tokens,
                        "tokens_evaluated": run.outcome.prompt_tokens,
                        **probabilities(run.new_probs()),
                    }
                    yield sse(timed(chunk, run.outcome))
                if run.outcome.cancelled:
                    return
                yield sse(final(run, ""))  # llama-server ends this stream without [DONE]

        return Response.stream(events())


def _has_media(messages: Any) -> bool:
    """Whether a message holds an image or audio part."""
    for message in messages if isinstance(messages, list) else []:
        parts = message.get("content") if isinstance(message, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_audio"):
                return True
    return False


def _stop_type(outcome: Outcome) -> str:
    """llama-server's `stop_type` on /completion."""
    if outcome.finish_reason == "length":
        return "limit"
    return "word" if outcome.stop_word else "eos"


def _finish_reason(run: Run, output: ChatOutput) -> str:
    """As llama-server: a call ends the turn with "tool_calls", unless the answer was cut."""
    if output.tool_calls and run.outcome.finish_reason == "stop":
        return "tool_calls"
    return run.outcome.finish_reason


def _collected(runs: list[Run]) -> Iterator[tuple[Run, str]]:
    """Each run's whole text, in turn; none after a cancel."""
    for run in runs:
        text = "".join(run.pieces)
        if run.outcome.cancelled:
            return
        yield run, text


def _totals(runs: list[Run]) -> dict[str, Any]:
    """`usage` counts each prompt once and every choice's tokens, as OpenAI does; `timings`
    are the first choice's, as llama-server gives them."""
    first_choices = [run.outcome for run in runs if run.choice == 0]
    prompt_tokens = sum(outcome.prompt_tokens for outcome in first_choices)
    completion_tokens = sum(run.outcome.completion_tokens for run in runs)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": sum(o.cached for o in first_choices)},
    }
    return {"usage": usage, "timings": runs[0].outcome.timings()}


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


def _delta(run: Run, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": run.index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _include_usage(request: dict[str, Any]) -> bool:
    return bool((request.get("stream_options") or {}).get("include_usage"))
