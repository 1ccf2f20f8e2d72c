"""Anthropic's Messages API as llama-server serves it: the request becomes an OpenAI chat request
(server-chat.cpp, server_chat_convert_anthropic_to_oai), is generated as a chat is, and its
answer comes back as Anthropic content blocks and events (server-task.cpp, to_json_anthropic*).

Errors keep llama-server's shape on this route too: the OpenAI error object, and in a stream an
`event: error` whose data is that object's inside.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from workers.engines.chat_shape import ChatShape
from workers.engines.completions import Completions
from workers.engines.generation import Outcome
from workers.engines.response import Response, encode_json
from workers.errors import ApiError
from workers.schema import (
    AnthropicMessage,
    ContentBlock,
    ImageSource,
    MessagesRequest,
    ResultBlock,
    decode_body,
)

CancelCheck = Callable[[], bool]

# llama-server's `max_tokens` when the request has none (Anthropic requires one)
DEFAULT_MAX_TOKENS = 4096
# Request fields that mean the same in both APIs
SHARED_FIELDS = ("temperature", "top_p", "top_k", "stream", "chat_template_kwargs")
BILLING_HEADER = "x-anthropic-billing-header:"
CCH_LENGTH = 5
TEXT_BLOCK = {"type": "text", "text": ""}
THINKING_BLOCK = {"type": "thinking", "thinking": ""}


# --- the request ------------------------------------------------------------------------------


def chat_request(request: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat request llama-server makes of an Anthropic one."""
    messages: list[dict[str, Any]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": _system_text(request.system)})
    for message in request.messages:
        messages += _chat_messages(message)
    chat: dict[str, Any] = {
        "messages": messages,
        "max_tokens": DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens,
    }
    if request.model:
        chat["model"] = request.model
    if request.tools is not None:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": {} if tool.input_schema is None else tool.input_schema,
                },
            }
            for tool in request.tools
        ]
    if request.tool_choice is not None:  # "none" and unknown types are left out, as there
        if request.tool_choice.type == "auto":
            chat["tool_choice"] = "auto"
        elif request.tool_choice.type in ("any", "tool"):
            chat["tool_choice"] = "required"
    if request.stop_sequences is not None:
        chat["stop"] = request.stop_sequences
    for field in SHARED_FIELDS:
        if (value := getattr(request, field)) is not None:
            chat[field] = value
    return chat


def _system_text(system: str | list[ContentBlock]) -> str:
    if isinstance(system, str):
        return _fixed_billing_header(system)
    return "".join(_fixed_billing_header(block.text) for block in system if block.type == "text")


def _fixed_billing_header(text: str) -> str:
    """Claude Code's system prompt opens with a header whose `cch=XXXXX;` changes on every
    request, so no cached prefix would get past it; llama-server makes it `cch=fffff;`."""
    if not text.startswith(BILLING_HEADER):
        return text
    found = text.find("cch=", len(BILLING_HEADER))
    if found < 0:
        return text
    start = found + len("cch=")
    end = start + CCH_LENGTH
    if end < len(text) and text[end] == ";":
        return text[:start] + "f" * CCH_LENGTH + text[end:]
    return text


def _chat_messages(message: AnthropicMessage) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: its text and images, its tool_use blocks as
    the assistant's `tool_calls`, its thinking as `reasoning_content`, and each tool_result
    block as a `tool` message after it."""
    role, content = message.role, message.content
    if content is None:
        if role == "assistant":
            return []  # llama-server drops it
        raise ApiError(400, "All non-assistant messages must contain 'content'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    reasoning = ""
    for block in content:
        if block.type == "text":
            parts.append({"type": "text", "text": block.text})
        elif block.type == "thinking":
            reasoning += block.thinking
        elif block.type == "image" and (url := _image_url(block.source)):
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif block.type == "tool_use":
            # the arguments as llama-server writes them: compact JSON, keys in order
            arguments = msgspec.json.encode(block.input, order="sorted").decode()
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif block.type == "tool_result":
            result = _result_content(block.content)
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
    messages: list[dict[str, Any]] = []
    if parts or calls or reasoning:
        converted: dict[str, Any] = {"role": role, "content": parts or ""}
        if calls:
            converted["tool_calls"] = calls
        if reasoning:
            converted["reasoning_content"] = reasoning
        messages.append(converted)
    return messages + results


def _image_url(source: ImageSource | None) -> str | None:
    if source is None:
        return None
    if source.type == "base64":
        return f"data:{source.media_type};base64,{source.data}"
    if source.type == "url":
        return source.url
    return None


def _result_content(content: str | list[ResultBlock] | None) -> str | list[dict[str, Any]]:
    """A tool result's content: its text, or its parts when it holds an image."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    has_images = False
    for block in content:
        if block.type == "text":
            parts.append({"type": "text", "text": block.text})
        elif block.type == "image":
            has_images = True
            if url := _image_url(block.source):
                parts.append({"type": "image_url", "image_url": {"url": url}})
    if has_images:
        return parts
    return "".join(part["text"] for part in parts)


# --- the answer -------------------------------------------------------------------------------


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An OpenAI assistant message as Anthropic content: its text (if any), then a tool_use
    block for each tool call, its arguments parsed (an empty object if they do not parse)."""
    blocks: list[dict[str, Any]] = []
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = msgspec.json.decode(function.get("arguments") or "")
        except msgspec.DecodeError:
            arguments = {}
        block = {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", "")}
        blocks.append({**block, "input": arguments})
    return blocks


def stop_reason(finish_reason: str, message: dict[str, Any]) -> str:
    """As llama-server: a stop string ends the turn as the end of generation does."""
    if finish_reason == "length":
        return "max_tokens"
    return "tool_use" if message.get("tool_calls") else "end_turn"


def event(name: str, data: dict[str, Any]) -> bytes:
    """An Anthropic server-sent event: its type on an `event:` line, then its data."""
    return b"event: " + name.encode() + b"\ndata: " + encode_json(data) + b"\n\n"


def tool_use_events(blocks: list[dict[str, Any]], first_index: int) -> Iterator[bytes]:
    """Each tool_use block streamed whole: a start naming the tool, its input as one
    `input_json_delta`, and a stop."""
    tools = [block for block in blocks if block["type"] == "tool_use"]
    for index, block in enumerate(tools, start=first_index):
        start = {"type": "tool_use", "id": block["id"], "name": block["name"]}
        delta = {"type": "input_json_delta", "partial_json": encode_json(block["input"]).decode()}
        yield _block_event("content_block_start", index, content_block=start)
        yield _block_event("content_block_delta", index, delta=delta)
        yield _block_event("content_block_stop", index)


def _block_event(kind: str, index: int, **fields: Any) -> bytes:
    return event(kind, {"type": kind, "index": index, **fields})


@dataclass
class Answer:
    id: str
    model: str
    outcome: Outcome
    shape: ChatShape

    def usage(self) -> dict[str, int]:
        """llama-server's: prompt tokens found in the slot's cache apart from the others."""
        outcome = self.outcome
        return {
            "cache_read_input_tokens": outcome.cached,
            "input_tokens": outcome.prompt_tokens - outcome.cached,
            "output_tokens": outcome.completion_tokens,
        }

    def message(self, text: str) -> dict[str, Any]:
        message = self.shape.parse(text).message()
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": thinking_blocks(message) + content_blocks(message),
            "model": self.model,
            "stop_reason": stop_reason(self.outcome.finish_reason, message),
            "stop_sequence": None,
            "usage": self.usage(),
        }

    def events(self, pieces: Iterator[str]) -> Iterator[bytes]:
        """message_start; the thinking (block 0) and then the text (the next block) as they
        come, each block opened by its first delta; the thinking closed with an empty
        signature, the text closed, each tool call whole; message_delta with the stop reason,
        then message_stop; no [DONE]."""
        start: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self.usage(), "output_tokens": 0},
        }
        yield event("message_start", {"type": "message_start", "message": start})
        blocks = _Blocks()
        reader = self.shape.stream()
        try:
            for piece in pieces:
                for delta in reader.feed(piece):
                    yield from blocks.delta(delta)
        except ApiError as error:  # the decode failed after the stream began
            yield event("error", error.body()["error"])
            return
        if self.outcome.cancelled:
            return
        deltas, output = reader.finish()
        for delta in deltas:
            yield from blocks.delta(delta)
        yield from blocks.close()
        message = output.message()
        yield from tool_use_events(content_blocks(message), blocks.count)
        reason = stop_reason(self.outcome.finish_reason, message)
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": self.outcome.completion_tokens},
            },
        )
        yield event("message_stop", {"type": "message_stop"})


class _Blocks:
    """The thinking and text blocks of a stream, opened by their first delta, in that order."""

    def __init__(self) -> None:
        self.count = 0  # blocks opened so far
        self._open: str | None = None

    def delta(self, delta: dict[str, Any]) -> Iterator[bytes]:
        if "reasoning_content" in delta:
            yield from self._into("thinking")
            part = {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
            yield _block_event("content_block_delta", self.count - 1, delta=part)
        if "content" in delta:
            yield from self._into("text")
            part = {"type": "text_delta", "text": delta["content"]}
            yield _block_event("content_block_delta", self.count - 1, delta=part)

    def _into(self, kind: str) -> Iterator[bytes]:
        if self._open == kind:
            return
        yield from self.close()
        block = THINKING_BLOCK if kind == "thinking" else TEXT_BLOCK
        yield _block_event("content_block_start", self.count, content_block=block)
        self._open = kind
        self.count += 1

    def close(self) -> Iterator[bytes]:
        if self._open == "thinking":  # Anthropic's clients expect a signature; ours is empty
            signature = {"type": "signature_delta", "signature": ""}
            yield _block_event("content_block_delta", self.count - 1, delta=signature)
        if self._open is not None:
            yield _block_event("content_block_stop", self.count - 1)
        self._open = None


def thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The reasoning as Anthropic's thinking block, first, with an empty signature."""
    reasoning = message.get("reasoning_content")
    return [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []


# --- the routes -------------------------------------------------------------------------------


def messages(completions: Completions, body: bytes, cancelled: CancelCheck) -> Response:
    """`POST /v1/messages`: generated as the chat route generates."""
    request = decode_body(body, MessagesRequest)
    params, runs, shape = completions.prepare_chat(chat_request(request), cancelled)
    run = runs[0]
    answer = Answer(f"chatcmpl-{uuid.uuid4().hex}", params["model"], run.outcome, shape)
    if not request.stream:
        return Response.json(200, answer.message("".join(run.pieces)))
    # the prompt runs now: its errors answer as plain HTTP errors, and message_start can tell
    # how much of it the slot's cache held
    first = next(run.pieces, None)
    pieces = run.pieces if first is None else itertools.chain([first], run.pieces)
    return Response.stream(answer.events(pieces))


def count_tokens(completions: Completions, body: bytes) -> Response:
    """`POST /v1/messages/count_tokens`: the prompt's length as the chat route counts it."""
    chat, _, _ = completions.shaped(chat_request(decode_body(body, MessagesRequest)))
    tokens, _ = completions.chat_tokens(chat)
    return Response.json(200, {"input_tokens": len(tokens)})
