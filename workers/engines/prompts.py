"""What a request asks to complete, read as llama-server reads it: the `prompt` forms of the
completion routes."""

from __future__ import annotations

from typing import Any

import llama_cpp

from workers.engines.generation import checked_tokens
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
