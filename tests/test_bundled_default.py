"""With no model source the router serves the bundled models: a chat model that answers
sensibly (the default), and Gemma 3 270M, a base model, listed for what it is."""

from __future__ import annotations


def test_the_default_chat_model_answers_and_gemma_is_listed_as_a_base_model(router) -> None:
    server = router()
    models = {entry["id"]: entry for entry in server.get("/v1/models").json()["data"]}
    chat, base = models["smollm2-135m-instruct-q4_1"], models["gemma-3-270m-q4_k_m"]
    assert chat["aliases"] == ["default"]
    assert "chat" in chat["tags"]
    assert "base" in base["tags"]
    assert chat["source"] == base["source"] == "cache"
    assert chat["can_remove"] is False and base["can_remove"] is False
    assert "What is 2+2?" in server.log()  # the start-up hint asks the chat model
    reply = server.post(
        "/v1/chat/completions",
        {
            "model": "default",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "max_tokens": 32,
            "temperature": 0,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert "4" in reply.json()["choices"][0]["message"]["content"], reply.json()
    continued = server.post(
        "/v1/completions",
        {"model": base["id"], "prompt": "The capital of France is", "max_tokens": 4},
        timeout=120,
    )
    assert continued.status_code == 200, continued.text
    assert continued.json()["choices"][0]["text"].strip()
    tokens = server.post("/tokenize", {"model": base["id"], "content": "Hello world"}).json()
    back = server.post("/detokenize", {"model": base["id"], "tokens": tokens["tokens"]}).json()
    assert back["content"].strip() == "Hello world"
