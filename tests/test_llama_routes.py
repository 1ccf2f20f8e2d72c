"""llama-server's `/apply-template`, `/infill` and Anthropic `/v1/messages` (with its
`/count_tokens`), answered as llama-server answers them: its tests/unit/test_template.py,
test_infill.py and test_compat_anthropic.py, in router mode, and its format_prompt_infill and
server_chat_convert_anthropic_to_oai for what they build.

Tiny models generate random bytes: greedy answers are compared with each other, not read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest

from tests.server import RouterProcess
from tests.test_inference import sse_events
from tests.tinymodels import EOS_TOKEN, FIM_TOKENS, write_tiny_llama
from workers.engines import anthropic
from workers.engines.infill import Budget, FimTokens, infill_tokens
from workers.schema import InfillChunk, MessagesRequest

NO_EOS = [[EOS_TOKEN, False]]
SYSTEM_AND_USER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
]
# llama.cpp's chatml, which renders the tiny models (they have no template of their own)
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
OPENED = CHATML + "<|im_start|>assistant\n"
# A template that shows what it was given: tools, tool calls, tool results and a kwarg.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% for tool in tools %}{{ tool.function.name }}: {{ tool.function.description }} "
    "{{ tool.function.parameters | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% for call in message.tool_calls or [] %}"
    "<tool_call>{{ call.id }} {{ call.function.name }} {{ call.function.arguments }}</tool_call>"
    "{% endfor %}"
    "{% if message.tool_call_id %}[{{ message.tool_call_id }}] {% endif %}"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
    "{% endif %}"
)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# An Anthropic history with a tool call and its result, and the OpenAI one llama-server makes
TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {
                "type": "tool_use",
                "id": "t1",
                "name": "get_weather",
                "input": {"z": 1, "city": "Paris"},
            },
        ],
    },
    {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "sunny"}],
            },
            {"type": "text", "text": "And tomorrow?"},
        ],
    },
]
OPENAI_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [{"type": "text", "text": "Let me look."}],
        "tool_calls": [
            {
                "id": "t1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris","z":1}'},
            }
        ],
    },
    {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
]
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    models = tmp_path_factory.mktemp("llama-routes")
    write_tiny_llama(models / "chat.gguf", seed=3)
    write_tiny_llama(models / "fim.gguf", seed=3, fim=tuple(FIM_TOKENS))
    write_tiny_llama(models / "fim-basic.gguf", seed=3, fim=("pre", "suf", "mid"))
    write_tiny_llama(models / "tools.gguf", seed=3, chat_template=TOOLS_TEMPLATE)
    preset = models / "presets.ini"
    preset.write_text(f"[fim-spm]\nmodel = {models / 'fim.gguf'}\nspm-infill = true\n")
    router = RouterProcess(
        ["--models-dir", str(models), "--models-preset", str(preset), "--models-max", "0"],
        tmp_path_factory.mktemp("cache"),
    )
    router.wait_ready()
    yield router
    router.stop_and_check()


def post_ok(server: RouterProcess, path: str, body: dict[str, Any]) -> Any:
    reply = server.post(path, body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def tokens(
    server: RouterProcess, model: str, text: str, special: bool = False, bos: bool = False
) -> list[int]:
    body = {"model": model, "content": text, "parse_special": special, "add_special": bos}
    return list(post_ok(server, "/tokenize", body)["tokens"])


def chat_prompt_tokens(server: RouterProcess, model: str, **body: Any) -> int:
    chat = {"model": model, "max_tokens": 1, **body}
    return int(post_ok(server, "/v1/chat/completions", chat)["usage"]["prompt_tokens"])


def assert_error(reply: Any, status: int, message: str = "") -> None:
    """llama-server's error on every route, this one included: the OpenAI error object."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status and isinstance(error["type"], str)
    assert message in error["message"], error


# --- /apply-template --------------------------------------------------------------------------


def test_apply_template_renders_what_the_chat_route_decodes(server: RouterProcess) -> None:
    def applied(**body: Any) -> str:
        return str(post_ok(server, "/apply-template", {"model": "chat", **body})["prompt"])

    assert applied(messages=SYSTEM_AND_USER) == OPENED
    # the chat route decodes exactly this text, after a BOS
    decoded = len(tokens(server, "chat", OPENED, special=True)) + 1
    assert chat_prompt_tokens(server, "chat", messages=SYSTEM_AND_USER) == decoded
    assert applied(messages=SYSTEM_AND_USER, add_generation_prompt=False) == CHATML
    prefill = [*SYSTEM_AND_USER, {"role": "assistant", "content": "Wh"}]
    assert applied(messages=prefill) == OPENED + "Wh"  # a trailing assistant message continues
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert applied(messages=parts) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    both = {"model": "chat", "messages": prefill, "continue_final_message": True}
    message = "Cannot set both add_generation_prompt and continue_final_message to true."
    assert_error(server.post("/apply-template", both), 400, message)
    assert_error(server.post("/apply-template", {"model": "chat"}), 400, "`messages`")


def test_apply_template_hands_tools_and_kwargs_to_the_template(server: RouterProcess) -> None:
    chat = {"messages": SYSTEM_AND_USER, "tools": [OPENAI_TOOL]}
    body = {"model": "tools", **chat}
    prompt = post_ok(server, "/apply-template", body)["prompt"]
    schema = json.dumps(WEATHER_TOOL["input_schema"])
    assert prompt.startswith(f"<|im_start|>system\nget_weather: The weather of a city {schema}\n")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert chat_prompt_tokens(server, "tools", **chat) == len(
        tokens(server, "tools", prompt, special=True, bos=True)
    )  # a template of the model's own writes the BOS itself, if it wants one

    thinking = {**body, "chat_template_kwargs": {"enable_thinking": False}}
    assert post_ok(server, "/apply-template", thinking)["prompt"].endswith("<think></think>")
    refused = {**body, "chat_template_kwargs": {"enable_thinking": "no"}}
    message = 'invalid type for "enable_thinking" (expected boolean, got string)'
    assert_error(server.post("/apply-template", refused), 400, message)
    assert_error(server.post("/v1/chat/completions", refused), 400, message)


# --- /infill ----------------------------------------------------------------------------------


def fim_ids(server: RouterProcess, model: str) -> dict[str, int]:
    return {role: tokens(server, model, text, special=True)[0] for role, text in FIM_TOKENS.items()}


INFILL = {
    "input_prefix": "def f():\n",
    "input_suffix": "return 1\n",
    "prompt": "  x",
    "input_extra": [{"filename": "a.py", "text": "A=1"}, {"text": "B=2"}],
    "n_predict": 6,
    "temperature": 0,
    "logit_bias": NO_EOS,
}


def test_infill_builds_the_repo_level_fim_prompt_and_answers_as_completion(
    server: RouterProcess,
) -> None:
    fim = fim_ids(server, "fim")

    def plain(text: str) -> list[int]:
        return tokens(server, "fim", text)

    expected = [
        fim["rep"], *plain("myproject\n"),
        fim["sep"], *plain("a.py\n"), *plain("A=1"),
        fim["sep"], *plain("tmp\n"), *plain("B=2"),  # a chunk without a name is "tmp"
        fim["sep"], *plain("filename\n"),
        1,  # BOS
        fim["pre"], *plain(INFILL["input_prefix"]), *tokens(server, "fim", "  x", special=True),
        fim["suf"], *plain(INFILL["input_suffix"]),
        fim["mid"],
    ]  # fmt: skip
    infilled = post_ok(server, "/infill", {"model": "fim", **INFILL})
    completed = post_ok(
        server,
        "/completion",
        {
            "model": "fim",
            "prompt": expected,
            "n_predict": 6,
            "temperature": 0,
            "logit_bias": NO_EOS,
        },
    )
    assert infilled["tokens_evaluated"] == len(expected)
    for field in ("prompt", "content", "tokens_predicted", "stop_type"):
        assert infilled[field] == completed[field], field
    assert infilled["prompt"].startswith("<|repo_name|>")
    assert infilled["prompt"].endswith("<|fim_middle|>")
    assert infilled["content"] and infilled["tokens_predicted"] == 6

    streamed = server.post("/infill", {"model": "fim", **INFILL, "stream": True})
    assert streamed.status_code == 200 and sse_events(streamed)[-1] != "[DONE]"
    events = [json.loads(event) for event in sse_events(streamed)]
    assert [event["stop"] for event in events] == [False] * (len(events) - 1) + [True]
    assert "".join(event["content"] for event in events) == infilled["content"]
    assert events[-1]["prompt"] == infilled["prompt"]


def test_infill_without_repo_tokens_and_with_the_suffix_first(server: RouterProcess) -> None:
    fim = fim_ids(server, "fim-basic")
    body = {**INFILL, "input_extra": [{"filename": "a.py", "text": "A=1"}]}

    def plain(text: str) -> list[int]:
        return tokens(server, "fim-basic", text)

    snippet = plain("\n\n--- snippet ---\n\n")  # the files' separator without <|file_sep|>
    middle = tokens(server, "fim-basic", "  x", special=True)
    prefix, suffix = plain(INFILL["input_prefix"]), plain(INFILL["input_suffix"])
    expected = [
        *snippet, *plain("A=1"), 1, fim["pre"], *prefix, *middle, fim["suf"], *suffix, fim["mid"]
    ]  # fmt: skip
    infilled = post_ok(server, "/infill", {"model": "fim-basic", **body})
    completion = {"model": "fim-basic", "prompt": expected, "n_predict": 1}
    assert infilled["prompt"] == post_ok(server, "/completion", completion)["prompt"]

    # --spm-infill (a preset's `spm-infill = true`): suffix, then prefix
    spm = post_ok(server, "/infill", {"model": "fim-spm", **body, "input_extra": []})
    fim = fim_ids(server, "fim-spm")
    expected = [
        fim["rep"], *plain("myproject\n"), fim["sep"], *plain("filename\n"),
        1, fim["suf"], *suffix, fim["pre"], *prefix, *middle, fim["mid"],
    ]  # fmt: skip
    completion = {"model": "fim-spm", "prompt": expected, "n_predict": 1}
    assert spm["prompt"] == post_ok(server, "/completion", completion)["prompt"]


def test_infill_refusals(server: RouterProcess) -> None:
    body = {"input_prefix": "a", "input_suffix": "b"}
    message = (
        "Infill is not supported by this model: prefix token is missing. "
        "suffix token is missing. middle token is missing. "
    )
    reply = server.post("/infill", {"model": "chat", **body})
    assert_error(reply, 501, message)
    assert reply.json()["error"]["type"] == "not_supported_error"
    for extra in ({}, {"filename": "ok"}, {"filename": 123}, {"filename": 123, "text": "abc"}):
        bad = {"model": "fim", **body, "input_extra": [extra]}
        assert_error(server.post("/infill", bad), 400, "input_extra[0]")
    assert_error(server.post("/infill", {"model": "fim", "input_prefix": "a"}), 400, "input_suffix")
    ids = {"model": "fim", **body, "input_prefix": ["a", 100000]}
    assert_error(server.post("/infill", ids), 400, "invalid tokens")
    assert post_ok(server, "/infill", {"model": "fim", **body, "n_predict": 1})["stop"] is True


def test_infill_keeps_what_fits_as_llama_server_does() -> None:
    """format_prompt_infill's budget: the prefix's last 3/4 of a batch, the suffix's first
    quarter less the middle's start and two, the extra context's last tokens that leave room
    for the batch and twice --n-predict."""
    fim = FimTokens(pre=100, suf=101, mid=102, rep=103, sep=104)

    def chars(text: str) -> list[int]:
        return [ord(char) for char in text]

    prefix, suffix = list(range(1000, 1020)), list(range(2000, 2010))
    extra = [InfillChunk(text="ab", filename="f")]
    budget = Budget(n_batch=16, n_predict=-1, n_ctx=30)  # room for 30 - 16 + 2 extra tokens
    context = [103, *chars("myproject\n"), 104, *chars("f\n"), *chars("ab")]
    context += [104, *chars("filename\n")]
    built = infill_tokens(fim, chars, prefix, suffix, [7], extra, budget, 1, False)
    assert built == [*context[-16:], 1, 100, *prefix[-12:], 7, 101, 2000, 102]
    spm = infill_tokens(fim, chars, prefix, suffix, [7], extra, budget, None, True)
    assert spm == [*context[-16:], 101, 2000, 100, *prefix[-12:], 7, 102]


# --- /v1/messages -----------------------------------------------------------------------------

ANTHROPIC = {
    "model": "chat",
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "max_tokens": 8,
    "temperature": 0,
}


def anthropic_events(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    """Each event's `event:` name and its data, which names the same type."""
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in reply.content.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("id: ")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: "), block
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


def test_messages_answer_in_anthropic_shapes(server: RouterProcess) -> None:
    body = post_ok(server, "/v1/messages", ANTHROPIC)
    assert body["id"].startswith("chatcmpl-")  # as llama-server names it
    assert (body["type"], body["role"], body["model"]) == ("message", "assistant", "chat")
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    [block] = body["content"]
    assert block["type"] == "text" and block["text"]
    usage = body["usage"]
    assert set(usage) == {"cache_read_input_tokens", "input_tokens", "output_tokens"}
    assert usage["output_tokens"] == 8
    counted = post_ok(server, "/v1/messages/count_tokens", ANTHROPIC)
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted["input_tokens"]
    assert "timings" not in body

    reply = server.post("/v1/messages", {**ANTHROPIC, "stream": True})
    assert reply.status_code == 200, reply.text
    events = anthropic_events(reply)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * (len(events) - 5),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert (
        start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"]
        == (counted["input_tokens"])
    )
    assert start["usage"]["cache_read_input_tokens"] > 0  # the same prompt, just decoded
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert all(delta["delta"]["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["delta"]["text"] for delta in deltas) == block["text"]
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"output_tokens": 8}
    assert "[DONE]" not in reply.text


def test_stop_sequences_end_the_turn(server: RouterProcess) -> None:
    """As llama-server: a stop string ends the turn (`end_turn`), as the end of generation
    does."""
    text = post_ok(server, "/v1/messages", ANTHROPIC)["content"][0]["text"]
    stop = next(char for char in text[1:] if char.isascii() and char.isprintable())
    stopped = post_ok(server, "/v1/messages", {**ANTHROPIC, "stop_sequences": [stop]})
    assert stopped["stop_reason"] == "end_turn"
    kept = text[: text.index(stop)]
    assert stopped["content"] == ([{"type": "text", "text": kept}] if kept else [])


def test_count_tokens_is_the_chat_routes_prompt(server: RouterProcess) -> None:
    counted = post_ok(server, "/v1/messages/count_tokens", ANTHROPIC)["input_tokens"]
    assert counted == chat_prompt_tokens(server, "chat", messages=SYSTEM_AND_USER)
    no_max = {key: value for key, value in ANTHROPIC.items() if key != "max_tokens"}
    assert post_ok(server, "/v1/messages/count_tokens", no_max)["input_tokens"] == counted


def test_a_tool_history_renders_as_its_openai_form(server: RouterProcess) -> None:
    """tool_use blocks become the assistant's tool_calls, tool_result blocks `tool` messages."""
    anthropic_body = {"model": "tools", "messages": TOOL_HISTORY, "tools": [WEATHER_TOOL]}
    counted = post_ok(server, "/v1/messages/count_tokens", anthropic_body)["input_tokens"]
    openai_body = {"model": "tools", "messages": OPENAI_HISTORY, "tools": [OPENAI_TOOL]}
    prompt = post_ok(server, "/apply-template", openai_body)["prompt"]
    assert counted == len(tokens(server, "tools", prompt, special=True, bos=True))
    assert "get_weather: The weather of a city" in prompt
    assert '<tool_call>t1 get_weather {"city":"Paris","z":1}</tool_call>Let me look.' in prompt
    assert "<|im_start|>user\nAnd tomorrow?<|im_end|>\n<|im_start|>tool\n[t1] sunny" in prompt
    answer = post_ok(server, "/v1/messages", {**anthropic_body, "max_tokens": 2})
    assert answer["usage"]["input_tokens"] + answer["usage"]["cache_read_input_tokens"] == counted


def test_messages_in_a_resumable_session(server: RouterProcess) -> None:
    """The same session as any inference route: the stream replays byte for byte."""
    conv = "anthropic/1"
    live = server.post(
        "/v1/messages", {**ANTHROPIC, "stream": True}, headers={"X-Conversation-Id": conv}
    )
    assert live.status_code == 200
    assert [name for name, _ in anthropic_events(live)][-1] == "message_stop"
    replay = server.get(f"/v1/stream?conv_id={quote(conv, safe='')}&from=0")
    assert replay.content == live.content


def test_bad_messages_bodies_get_a_400(server: RouterProcess) -> None:
    refused = [
        ({"max_tokens": 3}, "`messages`"),
        ({"messages": "x"}, "$.messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "$.messages[0].content"),
        ({"messages": [{"role": "user"}]}, "All non-assistant messages must contain 'content'"),
        ({"messages": [], "tools": [{"name": 5}]}, "$.tools[0].name"),
    ]
    for body, message in refused:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            assert_error(server.post(path, {"model": "chat", **body}), 400, message)
    ghost = {**ANTHROPIC, "model": "ghost"}
    assert_error(server.post("/v1/messages", ghost), 400, "model 'ghost' not found")
    empty = post_ok(server, "/v1/messages", {"model": "chat", "messages": [], "max_tokens": 2})
    assert empty["type"] == "message"  # llama-server is permissive about an empty history


# --- the conversion, on its own ---------------------------------------------------------------


def request(**body: Any) -> MessagesRequest:
    """A body as the worker decodes it."""
    return msgspec.convert(body, MessagesRequest)


def test_an_anthropic_request_becomes_llama_servers_openai_request() -> None:
    header = "x-anthropic-billing-header: cc_version=2; cch=a5145;You"
    chat = anthropic.chat_request(
        request(
            system=[
                {"type": "text", "text": header},
                {"type": "image"},
                {"type": "text", "text": " are"},
            ],
            messages=TOOL_HISTORY,
            tools=[{"name": "t"}],
            tool_choice={"type": "any"},
            stop_sequences=["END"],
            top_k=5,
        )
    )
    # the part of Claude Code's header that changes on every request is fixed
    system = "x-anthropic-billing-header: cc_version=2; cch=fffff;You are"
    assert chat["messages"] == [{"role": "system", "content": system}, *OPENAI_HISTORY]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "t", "description": "", "parameters": {}}}
    ]
    assert chat["tool_choice"] == "required" and chat["stop"] == ["END"]
    assert chat["max_tokens"] == 4096 and chat["top_k"] == 5 and chat["stream"] is False
    assert "temperature" not in chat
    choices = {
        kind: anthropic.chat_request(request(messages=[], tool_choice={"type": kind}))
        for kind in ("auto", "tool", "none")
    }
    assert [choice.get("tool_choice") for choice in choices.values()] == ["auto", "required", None]


def test_thinking_images_and_tool_results_of_every_form() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    messages = [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]},
        {"role": "assistant"},  # an assistant message without content is dropped
        {"role": "user", "content": [image, {"type": "tool_result", "tool_use_id": "a"}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "b", "content": "plain"},
                {"type": "tool_result", "tool_use_id": "c", "content": [image]},
            ],
        },
    ]
    assert anthropic.chat_request(request(messages=messages))["messages"] == [
        {"role": "assistant", "content": "", "reasoning_content": "hm"},
        {"role": "user", "content": [url]},
        {"role": "tool", "tool_call_id": "a", "content": ""},
        {"role": "tool", "tool_call_id": "b", "content": "plain"},
        {"role": "tool", "tool_call_id": "c", "content": [url]},
    ]


def test_tool_calls_become_tool_use_blocks() -> None:
    """Where the tool calls parsed out of a model's text will turn into Anthropic content."""
    message = {
        "role": "assistant",
        "content": "Looking it up.",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "now", "arguments": "not json"}},
        ],
    }
    assert anthropic.content_blocks(message) == [
        {"type": "text", "text": "Looking it up."},
        {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "c2", "name": "now", "input": {}},
    ]
    assert anthropic.stop_reason("stop", message) == "tool_use"
    assert anthropic.stop_reason("length", message) == "max_tokens"
    assert anthropic.stop_reason("stop", {"role": "assistant", "content": "hi"}) == "end_turn"
    assert anthropic.content_blocks({"role": "assistant", "content": ""}) == []

    streamed = b"".join(anthropic.tool_use_events(anthropic.content_blocks(message), 1))
    events = [
        json.loads(block.split("\ndata: ")[1]) for block in streamed.decode().split("\n\n") if block
    ]
    assert [(event["type"], event["index"]) for event in events] == [
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
    ]
    assert events[0]["content_block"] == {"type": "tool_use", "id": "c1", "name": "get_weather"}
    assert events[1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}


# --- the bundled models -----------------------------------------------------------------------


def test_bundled_models_real_templates(router) -> None:
    server = router()
    messages = [{"role": "user", "content": "What is 2+2?"}]
    smol = post_ok(server, "/apply-template", {"model": "default", "messages": messages})
    assert smol["prompt"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = {"model": "default", "messages": messages, "max_tokens": 32, "temperature": 0}
    reply = post_ok(server, "/v1/messages", answer)
    assert "4" in reply["content"][0]["text"], reply
    counted = post_ok(server, "/v1/messages/count_tokens", answer)["input_tokens"]
    usage = reply["usage"]
    assert counted == usage["input_tokens"] + usage["cache_read_input_tokens"]

    gemma = "gemma-3-270m-q4_k_m"
    prompt = post_ok(server, "/apply-template", {"model": gemma, "messages": messages})["prompt"]
    assert prompt == "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    refused = server.post("/infill", {"model": gemma, "input_prefix": "a", "input_suffix": "b"})
    assert_error(refused, 501, "Infill is not supported by this model")
