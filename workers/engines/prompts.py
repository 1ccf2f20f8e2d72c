"""What a request asks to complete, read as llama-server reads it: the `prompt` forms of the
completion routes, and chat messages rendered through the template, the last one continued."""

from __future__ import annotations

import dataclasses
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import ChatFormatterResponse

from workers.engines.chat_templates import ChatFormatter
from workers.engines.generation import checked_tokens, detokenize
from workers.errors import ApiError

BAD_PROMPT = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt '
    "string, or a list of mixed strings & tokens."
)


def completion_prompts(prompt: Any, llm: llama_cpp.Llama, has_projector: bool) -> list[list[int]]:
    """The token ids of each prompt. A list is several prompts unless it holds a token id: then
    it is one prompt of ids and texts (`[12, "text", 34]`)."""
    several = isinstance(prompt, list) and not any(_is_token(item) for item in prompt)
    prompts = prompt if several else [prompt]
    if not prompts:
        raise ApiError(400, '"prompt" must not be empty')
    return [_prompt_tokens(one, llm, has_projector) for one in prompts]


def embedding_texts(value: Any, llm: llama_cpp.Llama) -> list[str]:
    """The texts to embed, from every `input` form llama-server takes: a text, token ids mixed
    with texts, `{"prompt_string"}` or `{"content": [parts]}` objects, or a list of those."""
    several = isinstance(value, list) and not any(_is_token(item) for item in value)
    items = value if several else [value]
    if not items:
        raise ApiError(400, "Input content cannot be empty")
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = item["prompt_string"] if "prompt_string" in item else _parts_text(item)
        if isinstance(item, list):
            tokens = _prompt_tokens(item, llm, has_projector=False)
            item = detokenize(llm, tokens)
        if not isinstance(item, str):
            raise ApiError(400, BAD_PROMPT)
        texts.append(item)
    return texts


def _parts_text(item: dict[str, Any]) -> str | None:
    """The text of `{"content": [{"type": "text", "text": ...}, ...]}`; None for anything else
    (a bare string content included, as llama-server refuses it)."""
    content = item.get("content")
    if not isinstance(content, list) or not content:
        return None
    texts = [part.get("text") if isinstance(part, dict) else None for part in content]
    if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        return None
    if not all(isinstance(text, str) for text in texts):
        return None
    return "".join(str(text) for text in texts)


def _prompt_tokens(prompt: Any, llm: llama_cpp.Llama, has_projector: bool) -> list[int]:
    if isinstance(prompt, dict):
        if "multimodal_data" in prompt:
            if not has_projector:
                message = (
                    "Multimodal data provided, but model does not support multimodal requests."
                )
                raise ApiError(400, message)
            raise ApiError(501, "multimodal prompts are not supported by this server yet")
        prompt = prompt.get("prompt_string")
    if isinstance(prompt, str):
        return _tokenize(llm, prompt, add_bos=True)
    if not isinstance(prompt, list):
        raise ApiError(400, BAD_PROMPT)
    tokens: list[int] = []
    for position, item in enumerate(prompt):
        if isinstance(item, str):  # only a text that opens the prompt gets a BOS
            tokens += _tokenize(llm, item, add_bos=position == 0)
        elif _is_token(item):
            tokens.append(item)
        else:
            raise ApiError(400, BAD_PROMPT)
    return checked_tokens(tokens, llm)


def _is_token(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def _tokenize(llm: llama_cpp.Llama, text: str, add_bos: bool) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=add_bos, special=True)


def render_chat(
    formatter: ChatFormatter, messages: list[dict[str, Any]], request: dict[str, Any]
) -> ChatFormatterResponse:
    """The messages through the template. A continued last message is rendered as llama.cpp
    does: the messages before it with the generation prompt, then its content, left open."""
    continuing, add_generation_prompt = _continuation(messages, request)
    tools = request.get("tools")
    extra = _template_kwargs(request)
    if not (continuing and messages):
        return formatter(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra
        )
    formatted = formatter(messages=messages[:-1], tools=tools, add_generation_prompt=True, **extra)
    content = messages[-1].get("content") or ""
    return dataclasses.replace(formatted, prompt=formatted.prompt + content)


def _template_kwargs(request: dict[str, Any]) -> dict[str, Any]:
    """`chat_template_kwargs`: more variables for the template (`enable_thinking` and the like),
    as llama-server hands them to it."""
    extra = request.get("chat_template_kwargs") or {}
    if not isinstance(extra, dict):
        raise ApiError(400, '"chat_template_kwargs" must be an object')
    if isinstance(extra.get("enable_thinking"), str):
        raise ApiError(400, 'invalid type for "enable_thinking" (expected boolean, got string)')
    return extra


def _continuation(messages: list[dict[str, Any]], request: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the last message is continued, and whether the generation prompt is added, by
    llama-server's rules: a trailing assistant message is continued unless the request says
    how (its --prefill-assistant, on by default)."""
    asked = request.get("continue_final_message")
    continuing = asked is True or asked in ("content", "reasoning_content")
    add_generation_prompt = request.get("add_generation_prompt") is not False
    last_is_assistant = bool(messages) and messages[-1].get("role") == "assistant"
    if not continuing and last_is_assistant:
        if len(messages) >= 2 and messages[-2].get("role") == "assistant":
            raise ApiError(400, "Cannot have 2 or more assistant messages at the end of the list.")
        continuing, add_generation_prompt = True, False
    if continuing and add_generation_prompt:
        raise ApiError(
            400, "Cannot set both add_generation_prompt and continue_final_message to true."
        )
    if continuing and last_is_assistant and messages[-1].get("tool_calls"):
        raise ApiError(400, "Cannot continue an assistant message that contains tool calls.")
    return continuing, add_generation_prompt


def chat_prompt(formatter: ChatFormatter, request: dict[str, Any]) -> ChatFormatterResponse:
    """A chat request's prompt as the chat route renders it: content parts joined into one
    text (the templates expect text), and a template's own error is the request's fault."""
    messages = [_text_content(message) for message in request.get("messages") or []]
    try:
        return render_chat(formatter, messages, request)
    except ApiError:
        raise
    except Exception as error:
        raise ApiError(400, f"cannot apply the chat template: {error}") from error


def _text_content(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        texts = [part.get("text", "") for part in message["content"] if isinstance(part, dict)]
        return {**message, "content": "".join(texts)}
    return message
