"""Which chat template a model uses: `--chat-template`, the GGUF's own, or llama.cpp's built-ins.

A GGUF without a template gets the built-in template of its family (Gemma models ship without
one), else chatml, which is llama-server's fallback too.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import FrameType
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
from llama_cpp import llama_chat_format

from workers.protocol import ModelSettings

# A chat template renders in milliseconds; one that takes this long is looping.
RENDER_SECONDS = 3.0
FAMILY_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}
FALLBACK_TEMPLATE = "chatml"


@cache
def builtin_templates() -> frozenset[str]:
    count = llama_lib.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    llama_lib.llama_chat_builtin_templates(names, count)
    return frozenset(name.decode() for name in names if name)


class BuiltinChatFormatter:
    """One of llama.cpp's built-in templates, applied by llama.cpp itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.template = name  # llama.cpp's built-ins know no tools

    def __call__(
        self, *, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **_: Any
    ) -> Any:
        chat = (llama_lib.llama_chat_message * len(messages))(
            *[
                llama_lib.llama_chat_message(
                    str(message.get("role", "user")).encode(),
                    str(message.get("content") or "").encode(),
                )
                for message in messages
            ]
        )
        name = self.name.encode()
        count, add = len(messages), add_generation_prompt
        size = llama_lib.llama_chat_apply_template(name, chat, count, add, None, 0)
        if size < 0:
            raise ValueError(f"chat template {self.name!r} cannot format these messages")
        buffer = ctypes.create_string_buffer(size + 1)
        llama_lib.llama_chat_apply_template(name, chat, count, add, buffer, size + 1)
        prompt = buffer.raw[:size].decode("utf-8", errors="replace")
        return llama_chat_format.ChatFormatterResponse(prompt=prompt, added_special=False)


class JinjaChatFormatter:
    """A Jinja template. llama-cpp-python's formatter fixes `add_generation_prompt` when it is
    built, so there is one of each."""

    def __init__(self, template: str, eos: str, bos: str) -> None:
        self.template = template
        self._with_prompt, self._without_prompt = (
            llama_chat_format.Jinja2ChatFormatter(
                template, eos_token=eos, bos_token=bos, add_generation_prompt=add
            )
            for add in (True, False)
        )

    def __call__(self, *, add_generation_prompt: bool = True, **kwargs: Any) -> Any:
        formatter = self._with_prompt if add_generation_prompt else self._without_prompt
        with render_deadline(RENDER_SECONDS):
            return formatter(**kwargs)


class TemplateTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the template ran for more than {seconds:g} s")


@contextmanager
def render_deadline(seconds: float) -> Iterator[None]:
    """Stop a template that runs too long. jinja2's sandbox keeps a template from reaching
    what it should not, but not from looping: a model's template may come from any GGUF. The
    template is compiled Python, so a trace function on this thread can end it."""
    deadline = time.monotonic() + seconds
    steps = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal steps
        steps += 1
        if steps % 1000 == 0 and time.monotonic() > deadline:
            raise TemplateTimeout(seconds)
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


ChatFormatter = BuiltinChatFormatter | JinjaChatFormatter


def chat_formatter(
    llm: llama_cpp.Llama, settings: ModelSettings, bos: str, eos: str
) -> ChatFormatter:
    custom = settings.chat_template
    if custom:
        if custom in builtin_templates():
            return BuiltinChatFormatter(custom)
        return JinjaChatFormatter(custom, eos, bos)
    own = llm.metadata.get("tokenizer.chat_template")
    if own:
        return JinjaChatFormatter(own, eos, bos)
    family = llm.metadata.get("general.architecture", "")
    return BuiltinChatFormatter(FAMILY_TEMPLATES.get(family, FALLBACK_TEMPLATE))
