"""The OpenAPI 3.1 document of the router's own routes, served at /openapi.json.

Request bodies come from the same msgspec Structs that validate them, so the document cannot
drift from what is enforced; every route must have an entry in OPERATIONS, or the app refuses to
build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.routing import BaseRoute, Route

from router.http.middleware import PUBLIC
from router.http.routes.downloads import AddModel
from router.http.routes.models import ModelName
from router.http.routes.slots import SlotRequest
from router.http.routes.streams import LookupRequest
from workers.schema import BODY_TYPES

JsonObject = dict[str, Any]
STRING: JsonObject = {"type": "string"}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "header"
    description: str
    required: bool = False

    def document(self) -> JsonObject:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required,
            "description": self.description,
            "schema": STRING,
        }


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type | None = None
    params: tuple[Param, ...] = ()
    event_stream: bool = False  # the answer may be text/event-stream
    success: int = 200
    plain_text: bool = False  # the answer is text/plain, not JSON


AUTOLOAD = Param("autoload", "query", "load the model if needed: true/1, anything else is false")
CONVERSATION = Param(
    "x-conversation-id", "header", "keep the answer in a resumable session with this id"
)
CONV_ID = Param("conv_id", "query", "the session's conversation id", required=True)

_INFERENCE = {
    "/v1/chat/completions": "OpenAI chat completion",
    "/chat/completions": "OpenAI chat completion",
    "/v1/completions": "OpenAI text completion",
    "/completions": "llama.cpp native completion (as /completion)",
    "/completion": "llama.cpp native completion",
    "/v1/embeddings": "OpenAI embeddings",
    "/embeddings": "OpenAI embeddings",
    "/tokenize": "text to token ids",
    "/detokenize": "token ids to text",
    "/chat/completions/input_tokens": "how many prompt tokens a chat request makes",
    "/v1/chat/completions/input_tokens": "how many prompt tokens a chat request makes",
    "/apply-template": "a chat rendered with the model's template, not generated",
    "/infill": "fill in the middle of code with the model's FIM tokens (as /completion)",
    "/v1/messages": "Anthropic Messages API",
    "/v1/messages/count_tokens": "Anthropic token count of a messages request",
}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation("liveness"),
    ("GET", "/v1/health"): Operation("liveness"),
    ("GET", "/props"): Operation(
        "router properties, or a model's own with ?model=",
        params=(Param("model", "query", "a model id or alias"), AUTOLOAD),
    ),
    ("GET", "/slots"): Operation(
        "a model's slots, as llama-server lists them",
        params=(
            Param("model", "query", "a model id or alias", required=True),
            AUTOLOAD,
            Param("fail_on_no_slot", "query", "answer 503 when every slot is busy"),
        ),
    ),
    ("POST", "/slots/{id_slot}"): Operation(
        "save, restore or erase a slot's KV cache (needs --slot-save-path)",
        body=SlotRequest,
        params=(
            Param("id_slot", "path", "the slot's number", required=True),
            Param("action", "query", "save, restore or erase", required=True),
            Param("model", "query", "a model id or alias, if the body names none"),
            AUTOLOAD,
        ),
    ),
    ("GET", "/openapi.json"): Operation("this document"),
    ("GET", "/metrics"): Operation(
        "Prometheus figures of every model and of the router, or of one model with ?model=",
        params=(Param("model", "query", "a model id or alias"), AUTOLOAD),
        plain_text=True,
    ),
    ("GET", "/models"): Operation(
        "the model table", params=(Param("reload", "query", "re-read models dir and presets"),)
    ),
    ("GET", "/v1/models"): Operation(
        "the model table", params=(Param("reload", "query", "re-read models dir and presets"),)
    ),
    ("GET", "/models/sse"): Operation("model status events", event_stream=True),
    ("POST", "/models/load"): Operation("load a model", body=ModelName),
    ("POST", "/models/unload"): Operation("unload a model or cancel its download", ModelName),
    ("POST", "/models"): Operation("download a model into the cache", body=AddModel),
    ("DELETE", "/models"): Operation(
        "remove a cached model",
        params=(Param("model", "query", "a cached model's id", required=True),),
    ),
    ("GET", "/v1/stream"): Operation(
        "replay and follow a resumable session",
        params=(
            CONV_ID,
            Param("from", "query", "byte offset to resume from"),
            Param("last-event-id", "header", "byte offset to resume from"),
        ),
        event_stream=True,
    ),
    ("DELETE", "/v1/stream"): Operation("stop a session", params=(CONV_ID,), success=204),
    ("POST", "/v1/streams/lookup"): Operation("sessions by conversation id", body=LookupRequest),
    **{
        ("POST", path): Operation(
            summary, body=BODY_TYPES[path], params=(AUTOLOAD, CONVERSATION), event_stream=True
        )
        for path, summary in _INFERENCE.items()
    },
}

ERROR_SCHEMA: JsonObject = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "type"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "type": {"type": "string"},
            },
        }
    },
}


def build_document(
    routes: list[BaseRoute],
    keys_required: bool,
    version: str,
    public: frozenset[tuple[str, str]] = PUBLIC,
) -> JsonObject:
    """The document for these routes; raises if a route has no description in OPERATIONS."""
    bodies = sorted({op.body for op in OPERATIONS.values() if op.body}, key=lambda t: t.__name__)
    refs, schemas = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}"
    )
    body_refs: dict[type | None, JsonObject] = dict(zip(bodies, refs, strict=True))
    schemas["Error"] = ERROR_SCHEMA
    paths: dict[str, JsonObject] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation = OPERATIONS.get((method, route.path))
            if operation is None:
                raise LookupError(f"{method} {route.path} has no OpenAPI description")
            secured = keys_required and (method, route.path) not in public
            entry = _operation(operation, body_refs.get(operation.body), secured)
            paths.setdefault(route.path, {})[method.lower()] = entry
    document: JsonObject = {
        "openapi": "3.1.0",
        "info": {"title": "llama-router", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if keys_required:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        }
    return document


def _operation(operation: Operation, body: JsonObject | None, secured: bool) -> JsonObject:
    answer: JsonObject = {"application/json": {"schema": {}}}
    if operation.plain_text:
        answer = {"text/plain": {"schema": STRING}}
    if operation.event_stream:
        answer["text/event-stream"] = {"schema": STRING}
    success: JsonObject = {"description": "success"}
    if operation.success != 204:
        success["content"] = answer
    error = {
        "description": "an OpenAI-style error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    entry: JsonObject = {
        "summary": operation.summary,
        "responses": {str(operation.success): success, "default": error},
    }
    if operation.params:
        entry["parameters"] = [param.document() for param in operation.params]
    if body is not None:
        entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if secured:
        entry["security"] = [{"bearer": []}, {"apiKey": []}]
    return entry
