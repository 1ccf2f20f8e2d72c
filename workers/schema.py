"""Request bodies of the inference routes, validated with msgspec.

The router checks a body against these before it spends a model load on it; the worker decodes
the same bytes again to read the fields it uses. Unknown fields pass through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from workers.errors import ApiError

T = TypeVar("T")


# llama-server refuses more completions per prompt (`n`) than it has slots; it has 4 unless told.
MAX_CHOICES = 4
Choices = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)]


class Sampling(msgspec.Struct, omit_defaults=True):
    model: str | None = None
    stream: bool = False
    n: Choices | None = None
    n_cmpl: Choices | None = None
    timings_per_token: bool = False
    temperature: float | None = None
    temp: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n_predict: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    logit_bias: dict[str, float | bool] | list[list[Any]] | None = None
    stream_options: dict[str, Any] | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    cache_prompt: bool = True
    # chat: true, with top_logprobs 0-20; completions: how many alternatives; llama-server: n_probs
    logprobs: bool | int | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    n_probs: Annotated[int, msgspec.Meta(ge=0)] | None = None


class ContentPart(msgspec.Struct):
    type: str
    text: str = ""


class Message(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None
    # "auto", "none", "required", or {"type": "function", "function": {"name": …}}
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_format: Literal["none", "deepseek", "deepseek-legacy", "auto"] | None = None
    # thinking tokens at most (-1: the server's --reasoning-budget), and what ends it early
    reasoning_budget_tokens: Annotated[int, msgspec.Meta(ge=-1)] | None = None
    thinking_budget_tokens: Annotated[int, msgspec.Meta(ge=-1)] | None = None
    reasoning_budget_message: str | None = None
    add_generation_prompt: bool | None = None
    # true, "content" or "reasoning_content" continue the last message; anything else does not
    continue_final_message: bool | str | None = None


class PromptObject(msgspec.Struct):
    """llama-server's prompt as an object: text (or mixed text and token ids), with the media
    the text's markers stand for when the model has a projector."""

    prompt_string: str | list[int | str]
    multimodal_data: str | list[str] | None = None


# A text, token ids mixed with texts (one prompt), or a list of prompts, each a text, a list of
# token ids mixed with texts, or an object.
Prompt = str | list[int | str | list[int | str] | PromptObject] | PromptObject


class CompletionRequest(Sampling, kw_only=True):
    prompt: Prompt


class EmbeddingRequest(msgspec.Struct):
    input: str | list[str | int | list[int | str] | dict[str, Any]] | dict[str, Any] = ""
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


class TokenizeRequest(msgspec.Struct):
    content: str = ""
    model: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(msgspec.Struct):
    tokens: list[int] = []
    model: str | None = None


class TemplateRequest(ChatRequest, kw_only=True):
    """`/apply-template`: a chat request rendered, not generated; llama-server requires its
    messages and hands `chat_template_kwargs` to the template."""

    messages: list[Message]
    chat_template_kwargs: dict[str, Any] | None = None


class InfillChunk(msgspec.Struct):
    """A file of the context `/infill` puts before the code it fills in."""

    text: str
    filename: str = "tmp"


class InfillRequest(Sampling, kw_only=True):
    """llama-server's `/infill`: the code before and after the gap (texts, or token ids mixed
    with texts), the start of the middle in `prompt`, and more files in `input_extra`; the
    completion fields of `/completion` besides."""

    input_prefix: str | list[int | str]
    input_suffix: str | list[int | str]
    prompt: str = ""
    input_extra: list[InfillChunk] = []


class ImageSource(msgspec.Struct):
    type: str = ""
    media_type: str = "image/jpeg"
    data: str = ""
    url: str = ""


class ResultBlock(msgspec.Struct):
    """A block of a `tool_result`'s content: text, or an image."""

    type: str
    text: str = ""
    source: ImageSource | None = None


class ContentBlock(msgspec.Struct, kw_only=True):
    """One block of an Anthropic message, whatever its `type`: the fields of text, thinking,
    image, tool_use and tool_result blocks. Blocks of other types are left out, as
    llama-server leaves them."""

    type: str
    text: str = ""
    thinking: str = ""
    source: ImageSource | None = None
    id: str = ""
    name: str = ""
    input: dict[str, Any] = {}
    tool_use_id: str = ""
    content: str | list[ResultBlock] | None = None


class AnthropicMessage(msgspec.Struct):
    role: str
    content: str | list[ContentBlock] | None = None


class AnthropicTool(msgspec.Struct):
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    """Anthropic's Messages API, with the fields llama-server reads (`/v1/messages` and its
    `/count_tokens`); `max_tokens`, required by Anthropic, defaults to 4096 there."""

    model: str | None = None
    messages: list[AnthropicMessage]
    system: str | list[ContentBlock] | None = None
    max_tokens: int | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None


BODY_TYPES: dict[str, type] = {
    "/v1/chat/completions": ChatRequest,
    "/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/completions": CompletionRequest,
    "/completion": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/embeddings": EmbeddingRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
    "/chat/completions/input_tokens": ChatRequest,
    "/v1/chat/completions/input_tokens": ChatRequest,
    "/apply-template": TemplateRequest,
    "/infill": InfillRequest,
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": MessagesRequest,
}

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a JSON body as `kind`; malformed JSON and wrong types answer 400."""
    return _decode(body, kind)


def decode_object(body: bytes) -> dict[str, Any]:
    """A JSON object body; anything else answers 400."""
    value = _decode(body, Any)
    if not isinstance(value, dict):
        raise ApiError(400, "request body must be a JSON object")
    return value


def _decode(body: bytes, kind: Any) -> Any:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        raise ApiError(400, f"invalid request: {error}") from error
    except msgspec.DecodeError as error:
        raise ApiError(400, f"malformed JSON: {error}") from error
