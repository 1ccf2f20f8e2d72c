"""Inference through the router: OpenAI shapes, streams, embeddings, tokens, the openai client."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import requests

from tests.tinymodels import EOS_TOKEN, write_tiny_bert, write_tiny_llama

NO_EOS = {"logit_bias": {str(EOS_TOKEN): -100}}


def sse_events(response: requests.Response) -> list[str]:
    """The `data:` payloads of an event stream, in order."""
    events = []
    for block in response.content.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    return events


def with_embedder(router, tmp_path: Path, models_dir: Path):
    """A router on the tiny models plus `embedder`, tiny-c set up for embeddings."""
    preset = tmp_path / "p.ini"
    preset.write_text(
        f"[embedder]\nmodel = {models_dir / 'tiny-c.gguf'}\nembeddings = true\npooling = mean\n"
    )
    return router("--models-dir", str(models_dir), "--models-preset", str(preset))


@pytest.fixture
def tiny_router(router, models_dir: Path):
    return router("--models-dir", str(models_dir))


def test_streamed_chat_has_openai_chunks_and_done(tiny_router) -> None:
    body = {
        "model": "tiny-a",
        "stream": True,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "hello"}],
        "stream_options": {"include_usage": True},
        **NO_EOS,
    }
    reply = tiny_router.post("/v1/chat/completions", body, stream=True)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "tiny-a"
        assert isinstance(chunk["created"], int)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] >= 12
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text


def test_non_streamed_completion(tiny_router) -> None:
    reply = tiny_router.post(
        "/v1/completions", {"model": "tiny-b", "prompt": "Once", "max_tokens": 8, **NO_EOS}
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["object"] == "text_completion"
    assert body["model"] == "tiny-b"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length"
    text = body["choices"][0]["text"]
    assert text
    # one byte per token in the test vocabulary: more characters than tokens means padding leaked
    assert len(text) <= body["usage"]["completion_tokens"]
    assert body["usage"]["completion_tokens"] >= 8
    assert body["usage"]["prompt_tokens"] > 0


def test_streamed_completion_and_native_completion(tiny_router) -> None:
    reply = tiny_router.post(
        "/v1/completions", {"model": "tiny-a", "prompt": "x", "max_tokens": 5, "stream": True}
    )
    events = sse_events(reply)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "text_completion" for e in events[:-1])

    native = tiny_router.post(
        "/completion", {"model": "tiny-a", "prompt": "x", "n_predict": 6, **NO_EOS}
    )
    body = native.json()
    assert body["stop"] is True
    assert body["stop_type"] == "limit"
    assert body["tokens_predicted"] >= 6
    assert isinstance(body["content"], str) and body["content"]

    streamed = tiny_router.post(
        "/completion", {"model": "tiny-a", "prompt": "x", "n_predict": 4, "stream": True, **NO_EOS}
    )
    events = [json.loads(e) for e in sse_events(streamed)]  # llama-server sends no [DONE] here
    assert events[-1]["stop"] is True
    assert all(e["stop"] is False for e in events[:-1])
    assert "".join(e["content"] for e in events)


def test_tokenize_detokenize_round_trip(tiny_router) -> None:
    text = "Hello, router!"
    tokens = tiny_router.post("/tokenize", {"model": "tiny-a", "content": text}).json()["tokens"]
    assert tokens and all(isinstance(token, int) for token in tokens)
    back = tiny_router.post("/detokenize", {"model": "tiny-a", "tokens": tokens}).json()
    # the byte-only test vocabulary has no "▁" token, so SentencePiece's space marker stays as is
    assert back["content"].replace("\u2581", " ").strip() == text
    pieces = tiny_router.post(
        "/tokenize", {"model": "tiny-a", "content": "Hi", "with_pieces": True}
    ).json()["tokens"]
    ids = tiny_router.post("/tokenize", {"model": "tiny-a", "content": "Hi"}).json()["tokens"]
    assert [piece["id"] for piece in pieces] == ids
    assert all(isinstance(p["piece"], (str, list)) for p in pieces)
    bad = tiny_router.post("/detokenize", {"model": "tiny-a", "tokens": [999999]})
    assert bad.status_code == 400


def test_embeddings_with_pooling_flag(router, tmp_path: Path) -> None:
    models = tmp_path / "emb"
    write_tiny_llama(models / "embedder.gguf", seed=3)
    server = router("--models-dir", str(models), "--embeddings", "--pooling", "mean")
    reply = server.post("/v1/embeddings", {"model": "embedder", "input": ["one", "two"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 64
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"]["prompt_tokens"] > 0


def test_an_embeddings_model_also_generates_and_an_encoder_refuses_with_a_400(
    router, tmp_path: Path
) -> None:
    """As llama-server: `--embeddings` adds embeddings; only an encoder cannot generate."""
    models = tmp_path / "emb"
    write_tiny_llama(models / "both.gguf", seed=3)
    write_tiny_bert(models / "encoder.gguf")
    server = router("--models-dir", str(models), "--embeddings", "--pooling", "mean")
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **NO_EOS}
    first = server.post("/v1/chat/completions", {"model": "both", **chat})
    assert first.status_code == 200, first.text
    embedded = server.post("/v1/embeddings", {"model": "both", "input": "hello"})
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"][0]["embedding"]) == 64
    again = server.post("/v1/chat/completions", {"model": "both", **chat, "temperature": 0})
    same = server.post("/v1/chat/completions", {"model": "both", **chat, "temperature": 0})
    assert again.status_code == same.status_code == 200
    assert again.json()["choices"][0]["message"] == same.json()["choices"][0]["message"]
    assert again.json()["usage"]["completion_tokens"] == 8
    vectors = server.post("/v1/embeddings", {"model": "encoder", "input": ["abc", "xyz"]})
    assert vectors.status_code == 200, vectors.text
    refused = server.post("/v1/chat/completions", {"model": "encoder", **chat})
    assert refused.status_code == 400
    assert "encoder-only" in refused.json()["error"]["message"]
    assert server.status("encoder") == "loaded"


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("", 1),
        ([12, 34, "string", 56], 1),
        (["string1", [12, 34, 56]], 2),
        ([[12, 34, 56], [12, "string", 34]], 2),
        ({"prompt_string": "string"}, 1),
        ({"content": [{"type": "text", "text": "string"}]}, 1),
        (["a", {"prompt_string": "b"}, {"content": [{"type": "text", "text": "c"}]}], 3),
    ],
)
def test_every_embedding_input_form_of_llama_server(
    router, tmp_path: Path, models_dir: Path, value: object, count: int
) -> None:
    server = with_embedder(router, tmp_path, models_dir)
    reply = server.post("/v1/embeddings", {"model": "embedder", "input": value})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == count
    same = server.post("/v1/embeddings", {"model": "embedder", "input": "string"}).json()
    if value == {"prompt_string": "string"}:
        assert reply.json()["data"][0]["embedding"] == same["data"][0]["embedding"]


def test_embedding_inputs_llama_server_refuses_are_a_400(
    router, tmp_path: Path, models_dir: Path
) -> None:
    server = with_embedder(router, tmp_path, models_dir)
    for refused in ([], {"content": "string"}, {"content": [{"type": "unknown"}]}):
        bad = server.post("/v1/embeddings", {"model": "embedder", "input": refused})
        assert bad.status_code == 400, (refused, bad.text)


def test_embeddings_without_pooling_is_a_400_and_disabled_is_a_501(router, tmp_path: Path) -> None:
    models = tmp_path / "emb"
    write_tiny_llama(models / "plain.gguf", seed=4)
    preset = tmp_path / "p.ini"
    preset.write_text(f"[pooled]\nmodel = {models / 'plain.gguf'}\nembeddings = true\n")
    server = router("--models-dir", str(models), "--models-preset", str(preset))
    none = server.post("/v1/embeddings", {"model": "pooled", "input": "x"})
    assert none.status_code == 400
    assert "Pooling type 'none'" in none.json()["error"]["message"]
    disabled = server.post("/v1/embeddings", {"model": "plain", "input": "x"})
    assert disabled.status_code == 501
    assert disabled.json()["error"]["type"] == "not_supported_error"
    assert server.status("pooled") == "loaded"  # a bad request does not crash the worker


def test_openai_client_chat_completions_embeddings(
    router, tmp_path: Path, models_dir: Path
) -> None:
    server = with_embedder(router, tmp_path, models_dir)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    chat = client.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert next(chunk.object for chunk in stream) == "chat.completion.chunk"
    completion = client.completions.create(model="tiny-b", prompt="x", max_tokens=5)
    assert completion.choices[0].finish_reason in ("length", "stop")
    vectors = client.embeddings.create(model="embedder", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
    models = {model.id for model in client.models.list()}
    assert {"tiny-a", "embedder"} <= models
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])


def test_values_that_crashed_llama_cpp_get_400_and_the_worker_lives(
    router, tmp_path: Path, models_dir: Path
) -> None:
    """Found by the fuzz test: each of these once killed the worker (SIGSEGV or abort)."""
    server = with_embedder(router, tmp_path, models_dir)
    text = {"model": "tiny-a", "prompt": "x", "max_tokens": 3}
    chat = {"model": "tiny-a", "max_tokens": 3}
    hostile = [
        ("/v1/completions", {**text, "prompt": [100000]}, "Prompt contains invalid tokens"),
        ("/v1/completions", {**text, "prompt": [-3, 5]}, "Prompt contains invalid tokens"),
        ("/v1/completions", {**text, "grammar": 'root ::= "a'}, "Failed to parse grammar"),
        ("/v1/completions", {**text, "grammar": "x ::= root"}, "Failed to parse grammar"),
        ("/v1/completions", {**text, "grammar": "\x00"}, "Failed to parse grammar"),
        ("/v1/completions", {**text, "json_schema": {"enum": []}}, "Failed to parse grammar"),
        ("/v1/completions", {**text, "json_schema": {"type": "?"}}, "invalid grammar or schema"),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/embeddings", {"model": "embedder", "input": [[100000]]}, "invalid tokens"),
        ("/v1/embeddings", {"model": "embedder", "input": [5, -1]}, "invalid tokens"),
    ]
    for path, body, message in hostile:
        server.post("/models/load", {"model": body["model"]})
        pid = server.wait_status(body["model"], "loaded")["pid"]
        reply = server.post(path, body)
        assert reply.status_code == 400, (body, reply.text)
        assert message in reply.json()["error"]["message"], (body, reply.text)
        assert server.model(body["model"]).get("pid") == pid, body  # the same worker, alive
    ignored = server.post("/v1/completions", {**text, "logit_bias": {"100000": 5, "-7": 1}})
    assert ignored.status_code == 200  # ids outside the vocabulary are ignored, as upstream
    empty = server.post("/v1/completions", {**text, "prompt": [[]]})
    assert empty.status_code == 200  # one empty prompt: an empty completion, as upstream
    assert empty.json()["choices"][0]["text"] == ""
    assert server.post("/v1/completions", {**text, "prompt": []}).status_code == 400  # no prompt


def test_a_seed_holds_for_its_own_request_only(tiny_router) -> None:
    def sample(**seed: int) -> str:
        body = {"model": "tiny-a", "prompt": "x", "max_tokens": 24, "temperature": 1.5, **NO_EOS}
        reply = tiny_router.post("/v1/completions", {**body, **seed})
        return reply.json()["choices"][0]["text"]

    assert sample(seed=42) == sample(seed=42)
    assert len({sample(), sample(), sample()}) > 1  # unseeded requests do not inherit 42


def test_a_body_larger_than_a_pipe_buffer_reaches_the_worker_whole(tiny_router) -> None:
    """A 1.2 MB body (far beyond a pipe's buffer; a prompt of token ids, which costs nothing
    to tokenize) travels whole to the worker, which answers that it exceeds the context, and
    lives; so do the other pipes it crosses (with several HTTP processes, the one to the
    supervisor). Over a pipe left non-blocking, it was cut and everything after it was
    garbage: the worker was killed and later requests hung."""
    text = {"model": "tiny-a", "max_tokens": 2}
    assert tiny_router.post("/v1/completions", {**text, "prompt": "x"}).status_code == 200
    pid = tiny_router.model("tiny-a")["pid"]
    for _ in range(2):
        reply = tiny_router.post("/v1/completions", {**text, "prompt": [5] * 400_000})
        assert reply.status_code == 400, reply.text
        assert "exceeds the available context size" in reply.json()["error"]["message"]
    assert tiny_router.post("/v1/completions", {**text, "prompt": "x"}).status_code == 200
    assert tiny_router.model("tiny-a")["pid"] == pid
