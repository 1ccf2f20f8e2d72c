"""Schemathesis against the router's own /openapi.json: any input, no 5xx, no traceback.

The router runs for real, with tiny models in worker processes. Generated bodies name a real
model most of the time (random names only ever reach the "not found" path), so requests get
past validation into the workers: sampling values, token ids, templates, sessions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.routing import Route

from router.http.openapi import OPERATIONS, build_document
from tests.server import RouterProcess
from tests.tinymodels import FIM_TOKENS, write_tiny_llama
from workers.schema import BODY_TYPES

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The model events stream never ends by design, so no generated call could finish.
ENDLESS = "/models/sse"
# Which models a generated body names, per request type: one that serves it, one unknown.
MODELS = {
    "EmbeddingRequest": ["embedder"],
    "InfillRequest": ["coder"],
    "AddModel": ["user/repo:Q4_K_M"],
}
TEXT_MODELS = ["tiny-a", "tiny-b"]
UNKNOWN = "no-such-model"
# `make test` runs a fixed, repeatable sample; `make fuzz` a long random one.
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "50"))
REPEATABLE = "FUZZ_EXAMPLES" not in os.environ


@pytest.fixture(scope="module")
def fuzzed_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    models = root / "models"
    for seed, name in enumerate(["tiny-a", "tiny-b", "embedder"]):
        write_tiny_llama(models / f"{name}.gguf", seed=seed)
    write_tiny_llama(models / "coder.gguf", seed=3, fim=tuple(FIM_TOKENS))
    preset = root / "presets.ini"
    preset.write_text(
        f"[embedder]\nmodel = {models / 'embedder.gguf'}\nembeddings = true\npooling = mean\n"
    )
    # No generated download may reach the network: every fetch goes to a closed local port.
    closed = "http://127.0.0.1:9"
    server = RouterProcess(
        [
            "--models-dir", str(models),
            "--models-preset", str(preset),
            "--models-max", "2",
            "--api-key", KEY,
            "--ctx-size", "256",
            "--stream-buffer-bytes", "65536",
            "--stream-ttl-seconds", "5",
            "--timeout", "60",
            "--slot-save-path", str(root / "saved-slots"),
            "--metrics",
        ],
        root / "cache",
        env={"HF_ENDPOINT": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed},
    )  # fmt: skip
    server.wait_ready()
    yield server
    server.stop_and_check()


@pytest.fixture(scope="module")
def router_schema(fuzzed_router: RouterProcess) -> Any:
    reply = requests.get(fuzzed_router.url + "/openapi.json", headers=AUTH, timeout=10)
    assert reply.status_code == 200
    document = reply.json()
    for name, schema in document["components"]["schemas"].items():
        if "model" in schema.get("properties", {}):
            schema["properties"]["model"] = {"enum": [*MODELS.get(name, TEXT_MODELS), UNKNOWN]}
            schema["required"] = sorted({*schema.get("required", []), "model"})
    # an embedding request without input is refused before the model is reached
    document["components"]["schemas"]["EmbeddingRequest"]["required"].append("input")
    return schemathesis.openapi.from_dict(document).exclude(path=ENDLESS)


def test_openapi_lists_every_route_and_asks_for_the_key(fuzzed_router: RouterProcess) -> None:
    assert fuzzed_router.get("/openapi.json").status_code == 401
    document = fuzzed_router.get("/openapi.json", headers=AUTH).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]["/models"]) == {"get", "post", "delete"}
    assert "security" not in document["paths"]["/health"]["get"]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}, {"apiKey": []}]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    messages = document["components"]["schemas"]["ChatRequest"]["properties"]["messages"]
    assert messages["type"] == "array"
    assert len(document["paths"]) == 29


def test_a_route_without_a_description_stops_the_build() -> None:
    async def endpoint(request: Any) -> None: ...

    with pytest.raises(LookupError, match="POST /v1/undocumented"):
        build_document([Route("/v1/undocumented", endpoint, methods=["POST"])], False, "b0")


def no_traceback(ctx: Any, response: Any, case: Any) -> bool:
    """An error answer is the OpenAI error object and tells nothing of the router's insides."""
    text = response.text
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    if response.status_code >= 400 and response.status_code != 499:
        error = response.json()["error"]
        assert error["code"] == response.status_code, text[:500]
        assert isinstance(error["message"], str) and error["message"], text[:500]
    return True


def fuzz_cases() -> list[Any]:
    """Every operation with valid input, and with invalid input where it takes any."""
    cases = []
    for (method, path), operation in sorted(OPERATIONS.items()):
        if path == ENDLESS:
            continue
        for mode in GenerationMode:
            if mode is GenerationMode.POSITIVE or operation.params or operation.body:
                cases.append(pytest.param(method, path, mode, id=f"{method} {path} {mode.value}"))
    return cases


@pytest.mark.parametrize("method, path, mode", fuzz_cases())
def test_no_input_gets_a_server_error(
    method: str, path: str, mode: GenerationMode, router_schema: Any, fuzzed_router: RouterProcess
) -> None:
    operation = router_schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=REPEATABLE,
        database=None,
    )
    def call(case: Any) -> None:
        response = case.call_and_validate(
            base_url=fuzzed_router.url,
            headers=AUTH,
            timeout=60,
            checks=[not_a_server_error, no_traceback],
        )
        statuses.append(response.status_code)

    statuses: list[int] = []
    call()
    assert fuzzed_router.proc.poll() is None, fuzzed_router.log()[-3000:]
    if path in BODY_TYPES and mode is GenerationMode.POSITIVE:
        # proof that generated requests got past validation into a model worker
        assert any(status == 200 for status in statuses), statuses


def test_router_is_whole_after_the_fuzz(fuzzed_router: RouterProcess) -> None:
    chat = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert fuzzed_router.post("/v1/chat/completions", chat, headers=AUTH).status_code == 200
    assert "Traceback" not in fuzzed_router.log()
