"""The official clients against a real router: OpenAI's `openai` and Anthropic's `anthropic`
Python packages, used as their documentation shows, parse what the router answers into their
typed objects (tool calls, log-probabilities, reasoning, llama-server's `timings`, Anthropic
messages, streams and token counts).

Tiny models write random bytes: what is checked is the shape, and what a grammar or a forced
tool call fixes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message, MessageTokensCount, TextBlock, ToolUseBlock
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionTokenLogprob

from tests.server import RouterProcess
from tests.test_request_forms import TIMINGS
from tests.test_tools import TIME, WEATHER

MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
THINKING = 'root ::= "<think>" [a-z]{3,8} "</think>" [a-z]{3,8}'


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    router = RouterProcess(
        ["--models-dir", str(models_dir), "--models-max", "0"], tmp_path_factory.mktemp("cache")
    )
    router.wait_ready()
    yield router
    router.stop_and_check()


@pytest.fixture(scope="module")
def client(server: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server: RouterProcess) -> anthropic.Anthropic:
    # the client adds /v1/messages to the base URL itself
    return anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0, timeout=120)


def fits_schema(name: str, arguments: dict[str, Any]) -> None:
    if name == "get_weather":
        assert set(arguments) == {"city", "days"}, arguments
        assert arguments["city"] in ("Paris", "London") and isinstance(arguments["days"], int)
    else:
        assert name == "get_time" and arguments == {"zone": arguments["zone"]}, arguments
        assert arguments["zone"] in ("UTC", "CET")


# --- openai: tool calls -------------------------------------------------------------------------


def test_openai_tool_calls_forced_and_named(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="tiny-a",
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=120,
        seed=1,
    )
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id  # a ChatCompletionMessageFunctionToolCall
    fits_schema(call.function.name, json.loads(call.function.arguments))

    named = client.chat.completions.create(
        model="tiny-a",
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=120,
        seed=2,
    )
    (call,) = named.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_time"
    fits_schema("get_time", json.loads(call.function.arguments))

    # the next turn as OpenAI's guide sends it: the typed message itself, then the result
    follow_up = client.chat.completions.create(
        model="tiny-a",
        messages=[
            *MESSAGES,
            named.choices[0].message,
            {"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'},
        ],
        tools=[WEATHER, TIME],
        max_tokens=4,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length")


def streamed_calls(client: openai.OpenAI, **extra: Any) -> tuple[dict[int, dict[str, Any]], str]:
    """The calls of a stream, put together as OpenAI's guide does: by `index`, each
    `function.arguments` piece appended to the last."""
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        stream=True,
        **{"max_tokens": 120, **extra},
    )
    calls: dict[int, dict[str, Any]] = {}
    finish = ""
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = call["id"] or delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return calls, finish


def test_openai_streamed_tool_calls_put_together(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    calls, finish = streamed_calls(client, tool_choice=named, seed=3)
    assert finish == "tool_calls"
    (call,) = calls.values()
    assert call["id"] and call["name"] == "get_weather"
    fits_schema("get_weather", json.loads(call["arguments"]))

    calls, finish = streamed_calls(
        client, tool_choice="required", parallel_tool_calls=True, seed=4, max_tokens=300
    )
    assert finish == "tool_calls" and sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        fits_schema(call["name"], json.loads(call["arguments"]))


def test_openai_streamed_tool_calls_as_the_guides_snippet_puts_them_together(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=120,
        stream=True,
    )
    final_tool_calls: dict[int, Any] = {}
    for chunk in stream:
        for tool_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            index = tool_call.index
            if index not in final_tool_calls:
                final_tool_calls[index] = tool_call
            final_tool_calls[index].function.arguments += tool_call.function.arguments
    fits_schema("get_time", json.loads(final_tool_calls[0].function.arguments))


# --- openai: log-probabilities, timings, reasoning ----------------------------------------------


def test_openai_chat_logprobs_are_typed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="tiny-b",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == completion.usage.completion_tokens == 10
    for entry in content:
        assert isinstance(entry, ChatCompletionTokenLogprob)
        assert entry.logprob <= 0 and entry.bytes is not None
        assert len(entry.top_logprobs) == 3
        best = [alternative.logprob for alternative in entry.top_logprobs]
        assert best == sorted(best, reverse=True)
        assert entry.top_logprobs[0].bytes == entry.bytes  # greedy: the likeliest one
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-6
    joined = b"".join(bytes(entry.bytes or []) for entry in content)
    assert joined.decode(errors="replace") == choice.message.content

    stream = client.chat.completions.create(
        model="tiny-b",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    pieces = [
        entry
        for chunk in stream
        for streamed in chunk.choices
        if streamed.logprobs is not None
        for entry in streamed.logprobs.content or []
    ]
    assert [entry.token for entry in pieces] == [entry.token for entry in content]


def test_openai_completions_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="tiny-a", prompt="abc", max_tokens=8, temperature=0, logprobs=2
    )
    assert isinstance(completion, Completion)
    choice = completion.choices[0]
    probs = choice.logprobs
    assert probs is not None and probs.tokens and probs.token_logprobs and probs.top_logprobs
    assert len(probs.tokens) == len(probs.token_logprobs) == len(probs.top_logprobs) == 8
    assert all(1 <= len(top) <= 2 for top in probs.top_logprobs)
    assert all(value <= 0 for value in probs.token_logprobs)
    assert probs.text_offset == [sum(map(len, probs.tokens[:at])) for at in range(8)]


def test_openai_timings_are_an_extra_field(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="tiny-c", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    timings = (completion.model_extra or {})["timings"]
    assert set(timings) == TIMINGS
    assert timings["predicted_n"] == completion.usage.completion_tokens
    assert completion.to_dict()["timings"] == timings

    text = client.completions.create(model="tiny-c", prompt="abc", max_tokens=3)
    assert set((text.model_extra or {})["timings"]) == TIMINGS

    stream = client.chat.completions.create(
        model="tiny-c", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert set((chunks[-1].model_extra or {})["timings"]) == TIMINGS
    assert all("timings" not in (chunk.model_extra or {}) for chunk in chunks[:-1])


def test_openai_reasoning_content_is_an_extra_field(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="tiny-c",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=40,
        extra_body={"grammar": THINKING},
    )
    message = completion.choices[0].message
    reasoning = (message.model_extra or {})["reasoning_content"]
    assert reasoning.isalpha() and message.content and message.content.isalpha()

    stream = client.chat.completions.create(
        model="tiny-c",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=40,
        extra_body={"grammar": THINKING},
        stream=True,
    )
    thought, said = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            thought += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            said += choice.delta.content or ""
    assert thought.isalpha() and said.isalpha()


# --- anthropic ----------------------------------------------------------------------------------

HI: list[Any] = [{"role": "user", "content": "hi"}]
# The Messages API of this client takes no `temperature` any more; the router still reads it.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}


def test_anthropic_messages_create_and_count_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="tiny-a", max_tokens=8, system="Be brief.", messages=HI, **GREEDY
    )
    assert isinstance(message, Message)
    assert message.role == "assistant" and message.stop_reason == "max_tokens"
    (block,) = message.content
    assert isinstance(block, TextBlock) and block.text
    assert message.usage.output_tokens == 8

    counted = claude.messages.count_tokens(model="tiny-a", system="Be brief.", messages=HI)
    assert isinstance(counted, MessageTokensCount)
    read = message.usage.cache_read_input_tokens or 0
    assert counted.input_tokens == message.usage.input_tokens + read > 0


def test_anthropic_stream_joins_into_the_final_message(claude: anthropic.Anthropic) -> None:
    whole = claude.messages.create(model="tiny-b", max_tokens=12, messages=HI, **GREEDY)
    with claude.messages.stream(model="tiny-b", max_tokens=12, messages=HI, **GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    (block,) = final.content
    assert isinstance(block, TextBlock)
    assert "".join(pieces) == block.text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12


def test_anthropic_tool_use_fits_the_schema(claude: anthropic.Anthropic) -> None:
    tools: list[Any] = [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    message = claude.messages.create(
        model="tiny-a",
        max_tokens=120,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice={"type": "any"},
        **GREEDY,
    )
    assert message.stop_reason == "tool_use"
    use = message.content[-1]
    assert isinstance(use, ToolUseBlock) and use.id and use.name == "get_weather"
    fits_schema("get_weather", dict(use.input))

    with claude.messages.stream(
        model="tiny-a",
        max_tokens=120,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice={"type": "any"},
        **GREEDY,
    ) as stream:
        final = stream.get_final_message()
    streamed = final.content[-1]
    assert isinstance(streamed, ToolUseBlock) and streamed.input == use.input


# --- the bundled models -------------------------------------------------------------------------


def test_both_clients_on_the_bundled_models(router) -> None:
    server = router()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model="gemma-3-270m-q4_k_m",
        messages=[{"role": "user", "content": "What is the weather in London this week?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function"
    fits_schema(call.function.name, json.loads(call.function.arguments))

    claude = anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0, timeout=120)
    message = claude.messages.create(
        model="default",
        max_tokens=32,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        **GREEDY,
    )
    assert isinstance(message.content[0], TextBlock) and "4" in message.content[0].text
