"""The model table: listing, load and unload."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.catalog import ModelSpec
from router.control.downloads import Download
from router.control.state import find_model, reload_catalog, with_files
from router.control.table import Model, Status, load_progress
from router.flags import command_line
from router.http.responses import EventsResponse
from router.http.routes.common import http_state, json_response, read_body, router_state, success
from workers.errors import ApiError
from workers.schema import decode_body


class ModelName(msgspec.Struct):
    model: str


def preset_ini(spec: ModelSpec) -> str:
    lines = [f"[{spec.id}]"]
    lines += [f"{key} = {value}" for key, value in spec.preset.items()]
    return "\n".join(lines) + "\n\n"


def command_args(spec: ModelSpec) -> list[str]:
    args = ["llama-router-model", "--model", spec.path or ""]
    if spec.mmproj:
        args += ["--mmproj", spec.mmproj]
    return [*args, *command_line(spec.flags), "--alias", spec.id]


def model_entry(model: Model, created: int) -> dict[str, Any]:
    spec = model.spec
    status: dict[str, Any] = {
        "value": model.public_status,
        "args": [] if spec.upstream else command_args(spec),
        "preset": preset_ini(spec),
    }
    if model.unreachable:
        status["reason"] = model.unreachable
    if model.failed:
        status["failed"] = True
        status["exit_code"] = model.exit_code
    if model.status is Status.LOADING and model.progress is not None:
        status["progress"] = load_progress(model.progress)
    inputs = ["text", "image"] if spec.mmproj else ["text"]
    entry: dict[str, Any] = {
        "id": spec.id,
        "aliases": sorted(spec.aliases),
        "tags": sorted(spec.tags),
        "object": "model",
        "owned_by": "llamacpp",
        "created": created,
        "status": status,
        "architecture": {"input_modalities": inputs, "output_modalities": ["text"]},
        "source": spec.source,
        "can_remove": spec.can_remove,
    }
    if model.info is not None and model.status.running:
        entry["meta"] = {
            key: model.info.get(key)
            for key in ("n_vocab", "n_ctx", "n_ctx_train", "n_embd", "n_params", "size")
        }
    if model.worker is not None:
        entry["memory"] = model.worker.resident_bytes()
        entry["pid"] = model.worker.pid
    return entry


def download_entry(download: Download, created: int) -> dict[str, Any]:
    status: dict[str, Any] = {"value": download.status, "args": []}
    if download.status == "downloading":
        status["progress"] = download.progress
    return {
        "id": download.model_id,
        "aliases": [],
        "tags": [],
        "object": "model",
        "owned_by": "llamacpp",
        "created": created,
        "status": status,
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "source": "cache",
        "can_remove": False,
    }


async def list_models(request: Request) -> Response:
    state = router_state(request)
    if request.query_params.get("reload") or state.downloads.take_finished():
        await reload_catalog(state)
    created = int(time.time())
    models = state.supervisor.models.values()
    data = [model_entry(model, created) for model in models if not model.spec.hidden]
    data += [download_entry(d, created) for d in state.downloads.entries()]
    return json_response({"object": "list", "data": data})


async def _model_name(request: Request) -> str:
    return decode_body(await read_body(request), ModelName).model


async def _find(request: Request, name: str, unknown_status: int) -> Model:
    model = await find_model(router_state(request), name)
    if model is None:
        raise ApiError(unknown_status, "model is not found")
    return model


async def load_model(request: Request) -> Response:
    model = await _find(request, await _model_name(request), 404)
    model = await with_files(router_state(request), model)
    await router_state(request).supervisor.load(model)
    if model.failed and model.status is Status.UNLOADED:
        raise ApiError(500, f"model name={model.id} failed to load: {model.load_error}")
    return success()


async def unload_model(request: Request) -> Response:
    """Stops a model, or cancels its download (the partial files stay for a resume)."""
    name = await _model_name(request)
    if router_state(request).downloads.cancel(name):
        return success()
    await router_state(request).supervisor.unload(await _find(request, name, 400))
    return success()


async def model_events(request: Request) -> EventsResponse:
    return EventsResponse(http_state(request).events)


routes = [
    Route("/models/sse", model_events, methods=["GET"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/models/load", load_model, methods=["POST"]),
    Route("/models/unload", unload_model, methods=["POST"]),
]
