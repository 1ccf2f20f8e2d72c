"""A chat request made ready for its model's template, and how its answer will be read.

Tools reach the template as the request gives them when the template knows tools; otherwise
(llama.cpp's built-ins, templates that never mention tools) they are described in the system
message, as llama-server's generic format does, and the history's calls and results become
the JSON the model is asked to write and to read.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from workers.engines.chat_output import (
    ChatOutput,
    ChatStream,
    ToolSyntax,
    forced_grammar,
    generic_tools_message,
    parse_chat,
    tool_syntax,
)
from workers.protocol import ModelSettings

# syntaxes whose forced calls have a grammar of their own; the others are forced to generic JSON
_GRAMMARS = {ToolSyntax.HERMES, ToolSyntax.LLAMA3, ToolSyntax.MISTRAL}


@dataclass
class ChatShape:
    """How an answer is read: the tools it may call and in which syntax, and whether its
    thinking is split off (and already opened by the prompt)."""

    tools: bool
    syntax: ToolSyntax
    split_thinking: bool
    thinking_open: bool = False

    def parse(self, text: str) -> ChatOutput:
        return parse_chat(text, self.split_thinking, self.thinking_open, self.tools, self.syntax)

    def stream(self) -> ChatStream:
        return ChatStream(self.split_thinking, self.thinking_open, self.tools, self.syntax)


def shape_chat(
    request: dict[str, Any], template: str, settings: ModelSettings
) -> tuple[dict[str, Any], ChatShape, str | None]:
    """The request as the template should see it, how its answer is read, and the grammar
    of a forced tool call (None when the model may answer in text)."""
    choice = request.get("tool_choice")
    tools = [] if choice == "none" else [_tool(tool) for tool in request.get("tools") or []]
    syntax = tool_syntax(template)
    parallel = request.get("parallel_tool_calls") is True
    knows_tools = syntax is not ToolSyntax.GENERIC or "tools" in template
    # as llama.cpp probes a template: one that writes the arguments out as JSON takes an object
    object_arguments = re.search(r"arguments\s*\|\s*tojson", template) is not None
    messages = _history(request.get("messages") or [], knows_tools, object_arguments)
    if tools and not knows_tools:
        messages = _with_system(messages, generic_tools_message(tools, parallel))
    grammar = None
    if tools:
        forced = syntax if syntax in _GRAMMARS else ToolSyntax.GENERIC
        grammar = forced_grammar(tools, choice, forced, parallel)
    shaped = {**request, "messages": messages, "tools": tools or None}
    reasoning_format = request.get("reasoning_format") or settings.reasoning_format
    return shaped, ChatShape(bool(tools), syntax, reasoning_format != "none"), grammar


def _tool(tool: Any) -> dict[str, Any]:
    """A tool as llama-server hands it to the template: its name, description and parameters
    only, in that order, empty where the request has none."""
    function = tool.get("function") if isinstance(tool, dict) else None
    function = function if isinstance(function, dict) else {}
    return {
        "type": "function",
        "function": {
            "name": function.get("name") or "",
            "description": function.get("description") or "",
            "parameters": function.get("parameters") or {},
        },
    }


def _history(messages: list[Any], knows_tools: bool, object_arguments: bool) -> list[Any]:
    """Earlier calls and their results, in the shape the template can render."""
    shaped = []
    for message in messages:
        if not isinstance(message, dict):
            shaped.append(message)
            continue
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and isinstance(calls, list) and calls:
            functions = [_function(call) for call in calls]
            if knows_tools and object_arguments:
                message = {
                    **message,
                    "tool_calls": [
                        {**call, "function": function}
                        for call, function in zip(calls, functions, strict=True)
                        if isinstance(call, dict)
                    ],
                }
            elif not knows_tools:
                message = {"role": "assistant", "content": json.dumps({"tool_calls": functions})}
        elif message.get("role") == "tool" and not knows_tools:
            result = {
                "tool_call_id": message.get("tool_call_id"),
                "content": message.get("content"),
            }
            message = {"role": "user", "content": json.dumps({"tool_response": result})}
        shaped.append(message)
    return shaped


def _function(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return {"name": "", "arguments": {}}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return {"name": function.get("name", ""), "arguments": arguments}


def _with_system(messages: list[Any], text: str) -> list[Any]:
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") == "system":
        content = first.get("content") or ""
        if isinstance(content, str):
            return [
                {**first, "content": f"{content}\n\n{text}" if content else text},
                *messages[1:],
            ]
    return [{"role": "system", "content": text}, *messages]
