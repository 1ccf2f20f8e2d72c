"""With no model source, the router serves the bundled Gemma 3 270M and it answers with text."""

from __future__ import annotations


def test_serves_bundled_gemma_with_real_text(router) -> None:
    server = router()
    (entry,) = server.get("/v1/models").json()["data"]
    assert entry["id"] == "gemma-3-270m-q4_k_m"
    assert entry["source"] == "cache"
    assert entry["can_remove"] is False
    reply = server.post(
        "/v1/chat/completions",
        {
            "model": entry["id"],
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 16,
            "temperature": 0,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    text = reply.json()["choices"][0]["message"]["content"]
    assert text.strip(), reply.json()
    assert "\x00" not in text, text
    tokens = server.post("/tokenize", {"model": entry["id"], "content": "Hello world"}).json()
    back = server.post("/detokenize", {"model": entry["id"], "tokens": tokens["tokens"]}).json()
    assert back["content"].strip() == "Hello world"
