"""What a chat model wrote, split as llama-server splits it: reasoning (`<think>…</think>`),
the answer, and tool calls in the syntax the model's template taught it.

Tool-call syntaxes, chosen from the template's text:
- Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one block per call;
- Llama 3.x: a JSON object `{"name": …, "parameters": {…}}`, maybe after `<|python_tag|>`;
- Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`;
- Gemma (FunctionGemma): `<start_function_call>call:NAME{key:value,…}<end_function_call>`,
  strings between `<escape>` marks;
- generic, for templates that know no tools (llama-server's fallback): the tools are described
  in a system message and the model answers `{"tool_call": {"name": …, "arguments": …}}` (or
  `{"tool_calls": […]}`) or `{"response": "…"}`.
Every syntax also accepts the generic JSON, which is what a forced call (`tool_choice`
`required` or a named function) is constrained to where the syntax has no grammar here.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from workers.errors import ApiError

THINK_START, THINK_END = "<think>", "</think>"


class ToolSyntax(enum.Enum):
    GENERIC = "generic"
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    GEMMA = "gemma"


def tool_syntax(template: str | None) -> ToolSyntax:
    text = template or ""
    if "<tool_call>" in text:
        return ToolSyntax.HERMES
    if "[TOOL_CALLS]" in text:
        return ToolSyntax.MISTRAL
    if "<start_function_call>" in text:
        return ToolSyntax.GEMMA
    if "<|python_tag|>" in text or ("tools" in text and "<|eot_id|>" in text):
        return ToolSyntax.LLAMA3
    return ToolSyntax.GENERIC


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object's text
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
            "id": self.id,
        }
        return call if index is None else {"index": index, **call}


@dataclass
class ChatOutput:
    content: str
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["content"] = self.content or None
            message["tool_calls"] = [call.openai() for call in self.tool_calls]
        return message


# --- reasoning ----------------------------------------------------------------------------------


def split_reasoning(text: str, thinking: bool) -> tuple[str, str]:
    """(reasoning, the rest). `thinking`: the prompt already opened a `<think>` block."""
    stripped = text.lstrip()
    if not thinking and stripped.startswith(THINK_START):
        thinking, text = True, stripped[len(THINK_START) :]
    if not thinking:
        return "", text
    reasoning, closed, rest = text.partition(THINK_END)
    if not closed:
        return reasoning.strip(), ""
    return reasoning.strip(), rest.lstrip()


# --- tool calls ---------------------------------------------------------------------------------

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_GEMMA = re.compile(r"<start_function_call>\s*call:([\w.-]+)\{(.*?)\}\s*<end_function_call>", re.S)


def parse_tool_calls(text: str, syntax: ToolSyntax) -> tuple[str, list[ToolCall]]:
    """(the answer's text, the calls) from what the model wrote; text that holds no call
    that parses stays the answer."""
    if syntax is ToolSyntax.HERMES and "<tool_call>" in text:
        blocks = [_json(body) for body in _HERMES.findall(text)]
        calls = [_call(block) for block in blocks if _is_call(block)]
        if calls:
            return _HERMES.sub("", text).strip(), calls
    if syntax is ToolSyntax.GEMMA and "<start_function_call>" in text:
        calls = [ToolCall(name, _gemma_arguments(body)) for name, body in _GEMMA.findall(text)]
        if calls:
            return _GEMMA.sub("", text).strip(), calls
    stripped = text.strip()
    if syntax is ToolSyntax.MISTRAL and stripped.startswith("[TOOL_CALLS]"):
        value = _json(stripped[len("[TOOL_CALLS]") :])
        if isinstance(value, list) and all(_is_call(item) for item in value):
            return "", [_call(item) for item in value]
    if stripped.startswith("<|python_tag|>"):
        stripped = stripped[len("<|python_tag|>") :].strip()
    value = _json(stripped)
    if isinstance(value, dict):
        if _is_call(value):
            return "", [_call(value)]
        if _is_call(value.get("tool_call")):
            return "", [_call(value["tool_call"])]
        listed = value.get("tool_calls")
        if isinstance(listed, list) and listed and all(_is_call(item) for item in listed):
            return "", [_call(item) for item in listed]
        if isinstance(value.get("response"), str) and len(value) == 1:
            return value["response"], []
    return text, []


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _is_call(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return False
    arguments = value.get("arguments", value.get("parameters", {}))
    return isinstance(arguments, (dict, str))


def _call(value: dict[str, Any]) -> ToolCall:
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    call = ToolCall(value["name"], arguments)
    if isinstance(value.get("id"), str) and value["id"]:
        call.id = value["id"]
    return call


def _gemma_arguments(body: str) -> str:
    """FunctionGemma's `key:value,…` (strings between `<escape>` marks) as a JSON object."""
    strings: list[str] = []

    def keep(match: re.Match[str]) -> str:
        strings.append(match.group(1))
        return f"\x00{len(strings) - 1}\x00"

    plain = re.sub(r"<escape>(.*?)<escape>", keep, body, flags=re.S)
    arguments: dict[str, Any] = {}
    for pair in filter(None, (part.strip() for part in plain.split(","))):
        key, _, raw = pair.partition(":")
        raw = raw.strip()
        if raw.startswith("\x00"):
            arguments[key.strip()] = strings[int(raw.strip("\x00"))]
        else:
            value = _json(raw)
            arguments[key.strip()] = raw if value is None else value
    return json.dumps(arguments, ensure_ascii=False)


# --- the tools in the prompt, and forced calls --------------------------------------------------


def generic_tools_message(tools: list[dict[str, Any]], parallel: bool) -> str:
    """llama-server's system prompt for a template that knows no tools."""
    shape = (
        '{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}'
        if parallel
        else ('{"tool_call": {"name": ..., "arguments": {...}}}')
    )
    return (
        "You can call any of the following tools to satisfy the user's requests: "
        + json.dumps([tool.get("function", tool) for tool in tools], ensure_ascii=False)
        + f"\n\nTo call a tool, respond with nothing but the JSON {shape}; otherwise respond "
        'with the JSON {"response": "..."} or in plain text.'
    )


def forced_grammar(
    tools: list[dict[str, Any]], choice: Any, syntax: ToolSyntax, parallel: bool
) -> str | None:
    """A GBNF grammar that lets the model write only calls of the allowed tools, with
    arguments that fit their schemas; None when the model may also answer in text."""
    if choice in (None, "auto", "none"):
        return None
    functions = [tool.get("function", {}) for tool in tools if isinstance(tool, dict)]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        functions = [function for function in functions if function.get("name") == wanted]
        if not functions:
            raise ApiError(400, f"tool_choice names a function that is not in tools: {wanted}")
    elif choice != "required":
        raise ApiError(400, f"Invalid tool_choice: {choice}")
    if not functions:
        raise ApiError(400, "tool_choice requires at least one tool")
    key = "parameters" if syntax is ToolSyntax.LLAMA3 else "arguments"
    one_call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": function.get("name", "")},
                    key: function.get("parameters") or {"type": "object"},
                },
                "required": ["name", key],
            }
            for function in functions
        ]
    }
    if syntax is ToolSyntax.HERMES:
        call = _rule(one_call, "call")
        block = r'"<tool_call>\n" call "\n</tool_call>"'
        return f"root ::= {block}" + (f' ( "\\n" {block} )*' if parallel else "") + "\n" + call
    if syntax is ToolSyntax.LLAMA3:
        return _rule(one_call, "root")
    if syntax is ToolSyntax.MISTRAL:
        call = _rule(one_call, "call")
        more = ' ( "," call )*' if parallel else ""
        return f'root ::= "[TOOL_CALLS][" call{more} "]"\n' + call
    if parallel:
        schema = {
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "items": one_call, "minItems": 1}},
            "required": ["tool_calls"],
        }
    else:
        schema = {
            "type": "object",
            "properties": {"tool_call": one_call},
            "required": ["tool_call"],
        }
    return _rule(schema, "root")


def after_thinking(grammar: str) -> str:
    """A forced call's grammar for a prompt that opened the model's thinking: the thinking
    (no `<` in it), its end, then the call."""
    call = re.sub(r"^root ::=", "forced-call ::=", grammar, flags=re.M)
    return f'root ::= [^<]* "{THINK_END}" [ \\t\\n]{{0,3}} forced-call\n' + call


def _rule(schema: dict[str, Any], name: str) -> str:
    """The grammar of a JSON schema, its top rule named `name`."""
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as error:  # the converter reports a schema it cannot use in any way
        raise ApiError(400, f"invalid tool parameters schema: {error}") from error
    if name == "root":
        return grammar
    return re.sub(r"^root ::=", f"{name} ::=", grammar, flags=re.M)


# --- streamed -----------------------------------------------------------------------------------

_MARKERS = {ToolSyntax.HERMES: "<tool_call>", ToolSyntax.GEMMA: "<start_function_call>"}
_PYTHON_TAG = "<|python_tag|>"


class ChatStream:
    """Turns the pieces of a streamed answer into OpenAI deltas: `reasoning_content` while the
    model thinks, `content` after, and text that may be a tool call held back until the end,
    when the whole answer is parsed and its calls go out as `tool_calls` deltas."""

    def __init__(
        self, split_thinking: bool, thinking_open: bool, tools: bool, syntax: ToolSyntax
    ) -> None:
        self._split = split_thinking
        self._open = thinking_open
        self._tools = tools
        self._syntax = syntax
        self._text = ""
        self._sent = {"reasoning_content": "", "content": ""}
        # No tools, and the answer began without thinking: the rest is sent as it comes,
        # without looking at the whole text again for every piece.
        self._plain: list[str] | None = None

    def feed(self, piece: str) -> list[dict[str, Any]]:
        if self._plain is not None:
            self._plain.append(piece)
            return [{"content": piece}] if piece else []
        self._text += piece
        reasoning, content = self._visible()
        deltas = self._deltas(reasoning, content)
        if not self._tools and not self._sent["reasoning_content"] and self._sent["content"]:
            self._plain = [self._text]
        return deltas

    def finish(self) -> tuple[list[dict[str, Any]], ChatOutput]:
        if self._plain is not None:
            self._text = self._sent["content"] = "".join(self._plain)
        output = parse_chat(self._text, self._split, self._open, self._tools, self._syntax)
        deltas = self._deltas(output.reasoning, output.content)
        for index, call in enumerate(output.tool_calls):
            # as OpenAI streams a call: its name and id first, with empty arguments, so that a
            # client that keeps the first delta and appends the rest gets each byte once
            opening = call.openai(index)
            opening["function"] = {**opening["function"], "arguments": ""}
            deltas.append({"tool_calls": [opening]})
            arguments = {"index": index, "function": {"arguments": call.arguments}}
            deltas.append({"tool_calls": [arguments]})
        return deltas, output

    def _deltas(self, reasoning: str, content: str) -> list[dict[str, Any]]:
        deltas = []
        for key, now in (("reasoning_content", reasoning), ("content", content)):
            sent = self._sent[key]
            if len(now) > len(sent) and now.startswith(sent):
                deltas.append({key: now[len(sent) :]})
                self._sent[key] = now
        return deltas

    def _visible(self) -> tuple[str, str]:
        """The reasoning and the answer that may go out now."""
        text = self._text
        if not self._split:
            return "", self._sendable(text)
        lead = text.lstrip()
        if not self._open and THINK_START.startswith(lead):
            return "", ""  # it may still become `<think>`
        if not self._open and not lead.startswith(THINK_START):
            return "", self._sendable(text)
        body = text if self._open else lead[len(THINK_START) :]
        reasoning, closed, rest = body.partition(THINK_END)
        if not closed:
            return _without_partial(reasoning, THINK_END).lstrip(), ""
        return reasoning.strip(), self._sendable(rest.lstrip())

    def _sendable(self, content: str) -> str:
        if not self._tools:
            return content
        marker = _MARKERS.get(self._syntax)
        if marker is not None:
            at = content.find(marker)
            return content[:at] if at >= 0 else _without_partial(content, marker)
        lead = content.lstrip()
        if not lead or lead[0] in "{[" or lead.startswith(_PYTHON_TAG):
            return ""  # a call, or an answer in JSON: known at the end
        if _PYTHON_TAG.startswith(lead):
            return ""
        return content


def _without_partial(text: str, marker: str) -> str:
    """`text` without an end that could be the start of `marker`."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return text[:-length]
    return text


def parse_chat(
    text: str, split_thinking: bool, thinking_open: bool, tools: bool, syntax: ToolSyntax
) -> ChatOutput:
    reasoning, rest = split_reasoning(text, thinking_open) if split_thinking else ("", text)
    if not tools:
        return ChatOutput(rest, reasoning)
    content, calls = parse_tool_calls(rest, syntax)
    return ChatOutput(content, reasoning, calls)
