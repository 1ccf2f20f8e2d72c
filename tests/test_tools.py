"""Tool calls and reasoning in chat answers: the parsers alone, then end to end on real models."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from workers.engines.chat_output import (
    ChatStream,
    ToolSyntax,
    parse_chat,
    parse_tool_calls,
    tool_syntax,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "London"]}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
# A Hermes-style template (as Qwen's and NousResearch's): tools in the system turn, calls in
# <tool_call> blocks, results in a tool turn.
HERMES_TEMPLATE = """
{%- if tools %}<|im_start|>system
Tools: {{ tools | tojson }}. Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>
<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>{{ m.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
# A template that opens the model's thinking for it, unless told not to think.
THINKING_TEMPLATE = """{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is not defined or enable_thinking %}<think>
{% endif %}{% endif %}"""


# --- the parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("syntax", "text", "content"),
    [
        (
            ToolSyntax.HERMES,
            'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}'
            "</tool_call>",
            "Sure.",
        ),
        (
            ToolSyntax.LLAMA3,
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
            "",
        ),
        (
            ToolSyntax.MISTRAL,
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
            '"id": "abc123def"}]',
            "",
        ),
        (
            ToolSyntax.GEMMA,
            "<start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}"
            "<end_function_call>",
            "",
        ),
        (
            ToolSyntax.GENERIC,
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
            "",
        ),
    ],
)
def test_each_syntax_parses_into_openai_calls(syntax: ToolSyntax, text: str, content: str) -> None:
    answer, calls = parse_tool_calls(text, syntax)
    assert answer == content
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    if syntax is ToolSyntax.HERMES:
        assert [call.name for call in calls] == ["get_weather", "get_time"]
    if syntax is ToolSyntax.MISTRAL:
        assert calls[0].id == "abc123def"
    if syntax is ToolSyntax.GEMMA:
        assert json.loads(calls[0].arguments) == {"city": "Paris", "days": 3}


def test_text_that_is_no_call_stays_the_answer() -> None:
    for syntax in ToolSyntax:
        assert parse_tool_calls("The weather is fine.", syntax) == ("The weather is fine.", [])
    assert parse_tool_calls('{"response": "Hi!"}', ToolSyntax.GENERIC) == ("Hi!", [])
    assert parse_tool_calls("<tool_call>{not json</tool_call>", ToolSyntax.HERMES)[1] == []
    assert parse_tool_calls("<tool_call>[1, 2]</tool_call>", ToolSyntax.HERMES)[1] == []


def test_the_template_picks_the_syntax() -> None:
    assert tool_syntax(HERMES_TEMPLATE) is ToolSyntax.HERMES
    assert tool_syntax("{{ '[TOOL_CALLS]' }}") is ToolSyntax.MISTRAL
    assert tool_syntax("<|python_tag|>") is ToolSyntax.LLAMA3
    assert tool_syntax("chatml") is ToolSyntax.GENERIC


def stream_all(stream: ChatStream, text: str, size: int) -> list[dict[str, Any]]:
    deltas = []
    for at in range(0, len(text), size):
        deltas += stream.feed(text[at : at + size])
    deltas += stream.finish()[0]
    return deltas


@pytest.mark.parametrize("size", [1, 3, 100])
def test_a_stream_splits_thinking_and_holds_calls_back_whatever_its_pieces(size: int) -> None:
    text = (
        '<think>\nweighing it</think>\n\nLet me look.<tool_call>{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}</tool_call>'
    )
    deltas = stream_all(ChatStream(True, False, True, ToolSyntax.HERMES), text, size)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert reasoning == "weighing it"
    assert content == "Let me look."
    assert [call[0]["function"].get("name") for call in calls] == ["get_weather", None]
    assert calls[0][0]["function"]["arguments"] == ""  # OpenAI's order: the name, then these
    assert json.loads(calls[1][0]["function"]["arguments"]) == {"city": "Paris"}
    assert not any("<" in d.get("content", "") for d in deltas)
    whole = parse_chat(text, True, False, True, ToolSyntax.HERMES)
    assert (whole.reasoning, whole.content) == (reasoning, content)


def test_a_stream_without_tools_or_thinking_passes_text_through() -> None:
    deltas = stream_all(ChatStream(False, False, False, ToolSyntax.GENERIC), "<think>x</think>y", 2)
    assert "".join(d["content"] for d in deltas) == "<think>x</think>y"
    opened = stream_all(ChatStream(True, True, False, ToolSyntax.GENERIC), "plan</think>done", 1)
    assert "".join(d.get("reasoning_content", "") for d in opened) == "plan"
    assert "".join(d.get("content", "") for d in opened) == "done"


# --- end to end ---------------------------------------------------------------------------------


def chat(server: Any, body: dict[str, Any]) -> dict[str, Any]:
    answer = server.post("/v1/chat/completions", body, timeout=120)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def streamed(server: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = server.post("/v1/chat/completions", {**body, "stream": True}, timeout=120)
    assert answer.status_code == 200, answer.text
    return [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]


def check_call(call: dict[str, Any], names: set[str]) -> dict[str, Any]:
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] in names
    arguments = json.loads(call["function"]["arguments"])
    if call["function"]["name"] == "get_weather":
        assert arguments["city"] in ("Paris", "London") and isinstance(arguments["days"], int)
    return dict(arguments)


def test_a_forced_call_on_a_template_that_knows_no_tools(router, models_dir: Path) -> None:
    """The tiny model's template is llama.cpp's chatml: the generic syntax, constrained."""
    server = router("--models-dir", str(models_dir))
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}],
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "max_tokens": 120,
        "seed": 1,
    }
    choice = chat(server, body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    check_call(call, {"get_weather", "get_time"})

    named = {**body, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    chunks = streamed(server, named)
    pieces = [
        piece
        for chunk in chunks
        for choice in chunk["choices"]
        for piece in choice["delta"].get("tool_calls", [])
    ]
    arguments = "".join(piece["function"]["arguments"] for piece in pieces)
    assert {piece["function"]["name"] for piece in pieces if "name" in piece["function"]} == {
        "get_time"
    }
    assert json.loads(arguments)["zone"] in ("UTC", "CET")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    parallel = chat(server, {**body, "parallel_tool_calls": True, "max_tokens": 300})
    for call in parallel["choices"][0]["message"]["tool_calls"]:
        check_call(call, {"get_weather", "get_time"})

    # the follow-up turn, with the call and its result in the history, renders and answers
    follow_up = {
        "model": "tiny-a",
        "messages": [
            *body["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "clear"}'},
        ],
        "tools": [WEATHER, TIME],
        "max_tokens": 8,
    }
    assert chat(server, follow_up)["choices"][0]["finish_reason"] in ("stop", "length")
    bad = server.post("/v1/chat/completions", {**body, "tool_choice": {"function": {"name": "x"}}})
    assert bad.status_code == 400
    unusable = {"type": "object", "properties": {"a": {"$ref": 5}}}
    odd = {**WEATHER["function"], "parameters": unusable}
    bad = server.post("/v1/chat/completions", {**body, "tools": [{"function": odd}]})
    assert bad.status_code == 400, bad.text


def test_hermes_calls_from_the_models_own_template(
    router, models_dir: Path, tmp_path: Path
) -> None:
    template = tmp_path / "hermes.jinja"
    template.write_text(HERMES_TEMPLATE)
    server = router("--models-dir", str(models_dir), "--chat-template-file", str(template))
    body = {
        "model": "tiny-b",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 120,
    }
    choice = chat(server, body)["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    check_call(call, {"get_weather"})
    assert choice["finish_reason"] == "tool_calls"
    follow_up = {
        **body,
        "messages": [
            *body["messages"],
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ],
        "tool_choice": "none",
        "max_tokens": 4,
    }
    answer = chat(server, follow_up)["choices"][0]
    assert "tool_calls" not in answer["message"]


def test_gemma_makes_a_call_that_fits_the_schema_and_its_thinking_is_split(router) -> None:
    server = router()
    body = {
        "model": "gemma-3-270m-q4_k_m",
        "messages": [{"role": "user", "content": "What is the weather in London this week?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 60,
        "temperature": 0,
    }
    (call,) = chat(server, body)["choices"][0]["message"]["tool_calls"]
    check_call(call, {"get_weather"})
    thought = {
        "model": "gemma-3-270m-q4_k_m",
        "messages": [{"role": "user", "content": "Is the sky blue?"}],
        "grammar": 'root ::= "<think>" [a-z ]{3,30} "</think>" [a-z ]{3,30}',
        "max_tokens": 80,
    }
    message = chat(server, thought)["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]


def test_thinking_is_split_off_as_llama_server_does(
    router, models_dir: Path, tmp_path: Path
) -> None:
    server = router("--models-dir", str(models_dir))
    grammar = 'root ::= "<think>" [a-z]{3,8} "</think>" [a-z]{3,8}'
    body = {
        "model": "tiny-c",
        "messages": [{"role": "user", "content": "hi"}],
        "grammar": grammar,
        "max_tokens": 40,
    }
    message = chat(server, body)["choices"][0]["message"]
    assert message["reasoning_content"].isalpha() and message["content"].isalpha()
    chunks = streamed(server, {**body, "seed": 3})
    deltas = [choice["delta"] for chunk in chunks for choice in chunk["choices"]]
    kinds = [key for delta in deltas for key in delta if key in ("reasoning_content", "content")]
    assert kinds.index("reasoning_content") < len(kinds) - 1 - kinds[::-1].index("content")
    assert all("<" not in (delta.get("content") or "") for delta in deltas)
    kept = chat(server, {**body, "reasoning_format": "none"})["choices"][0]["message"]
    assert kept["content"].startswith("<think>") and "reasoning_content" not in kept

    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    opened = router("--models-dir", str(models_dir), "--chat-template-file", str(template))
    inside = {**body, "grammar": 'root ::= [a-z]{3,8} "</think>" [a-z]{3,8}'}
    message = chat(opened, inside)["choices"][0]["message"]
    assert message["reasoning_content"].isalpha() and message["content"].isalpha()
    budgeted = {**body, "logit_bias": {"2": -100}, "max_tokens": 40}
    del budgeted["grammar"]
    for budget in (0, 5):
        limited = router(
            "--models-dir", str(models_dir), "--chat-template-file", str(template),
            "--reasoning-budget", str(budget), "--reasoning-budget-message", "Enough.",
        )  # fmt: skip
        message = chat(limited, budgeted)["choices"][0]["message"]
        reasoning = message.get("reasoning_content", "")
        assert reasoning.endswith("Enough.") and message["content"]
        # the budget ends at its last token as sampled, not when the reader reads it;
        # a byte token is at most a character, and the message's tokens carry a leading "▁"
        thought = reasoning.removesuffix("Enough.").removesuffix("▁")
        assert len(thought) <= budget + 1
        per_request = {**budgeted, "reasoning_budget_tokens": 2, "reasoning_format": "none"}
        content = chat(limited, per_request)["choices"][0]["message"]["content"]
        assert content.count("Enough.</think>") == 1


def anthropic_events(answer: Any) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in answer.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_anthropic_messages_get_tool_use_and_thinking_blocks(
    router, models_dir: Path, tmp_path: Path
) -> None:
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    server = router(
        "--models-dir", str(models_dir), "--chat-template-file", str(template),
        "--reasoning-budget", "2",
    )  # fmt: skip
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    body = {
        "model": "tiny-a",
        "max_tokens": 300,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [tool],
        "tool_choice": {"type": "any"},
    }
    answer = server.post("/v1/messages", body).json()
    kinds = [block["type"] for block in answer["content"]]
    assert kinds[0] == "thinking" and kinds[-1] == "tool_use", answer
    use = answer["content"][-1]
    assert use["name"] == "get_weather" and use["input"]["city"] in ("Paris", "London")
    assert answer["stop_reason"] == "tool_use"

    events = anthropic_events(server.post("/v1/messages", {**body, "stream": True}))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts[0] == "thinking" and starts[-1] == "tool_use"
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {"type": "signature_delta", "signature": ""} in deltas
    (arguments,) = [d["partial_json"] for d in deltas if d["type"] == "input_json_delta"]
    assert json.loads(arguments)["city"] in ("Paris", "London")
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == list(range(len(starts)))


def test_a_jinja_template_gets_llama_cpps_extensions(
    router, models_dir: Path, tmp_path: Path
) -> None:
    template = tmp_path / "extended.jinja"
    template.write_text(
        "{% if messages[0].content == 'boom' %}{{ raise_exception('no boom here') }}{% endif %}"
        "[{{ strftime_now('%Y') }}]{{ tools | tojson(indent=1, sort_keys=True) }}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    )
    server = router("--models-dir", str(models_dir), "--chat-template-file", str(template))
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "tools": [TIME]}
    prompt = server.post("/apply-template", body).json()["prompt"]
    year = prompt[1:5]
    assert year.isdigit() and int(year) >= 2025
    assert '\n  "function": {' in prompt  # indented, and with its keys sorted:
    assert prompt.index('"function": {') < prompt.index('"type": "function"')
    assert prompt.endswith("user: hi\n")
    refused = server.post(
        "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": "boom"}]}
    )
    assert refused.status_code == 400 and "no boom here" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "the template ran for more than 3 s",
        ),
        ("{{ messages.__class__.__mro__ }}", "unsafe"),
        ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    ],
    ids=["loops", "reaches for a class", "reaches for globals"],
)
def test_a_hostile_template_gets_a_400_and_the_worker_lives(
    router, models_dir: Path, tmp_path: Path, template: str, message: str
) -> None:
    path = tmp_path / "hostile.jinja"
    path.write_text(template)
    server = router("--models-dir", str(models_dir), "--chat-template-file", str(path))
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    started = time.monotonic()
    refused = server.post("/v1/chat/completions", body)
    assert refused.status_code == 400 and message in refused.json()["error"]["message"]
    assert time.monotonic() - started < 10
    pid = server.model("tiny-a")["pid"]
    refused = server.post("/apply-template", body)
    assert refused.status_code == 400
    assert server.model("tiny-a")["pid"] == pid


def test_a_chats_input_tokens_are_counted_as_the_chat_decodes_them(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir))
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER],
        "max_tokens": 1,
    }
    counted = server.post("/v1/chat/completions/input_tokens", body).json()["input_tokens"]
    assert counted == chat(server, body)["usage"]["prompt_tokens"]
    assert server.post("/chat/completions/input_tokens", body).json() == {"input_tokens": counted}


def test_an_image_for_a_model_without_a_projector_gets_llama_servers_500(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir))
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    content = [{"type": "text", "text": "What is this?"}, picture]
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": content}]}
    refused = server.post("/v1/chat/completions", body)
    assert refused.status_code == 500
    assert "image input is not supported" in refused.json()["error"]["message"]
    source = {"type": "base64", "media_type": "image/png", "data": "AA"}
    anthropic_picture = {"type": "image", "source": source}
    anthropic: dict[str, Any] = {
        "model": "tiny-a",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [anthropic_picture]}],
    }
    assert server.post("/v1/messages", anthropic).status_code == 500
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [anthropic_picture]}
    call = {"type": "tool_use", "id": "t1", "name": "read", "input": {}}
    anthropic["messages"] = [
        {"role": "user", "content": "Read it."},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    assert server.post("/v1/messages", anthropic).status_code == 500
