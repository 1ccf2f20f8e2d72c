"""Health and router properties."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router import single_model
from router.control.state import find_model, with_files
from router.control.table import Model, Status
from router.flags import unapplied
from router.http.routes.common import json_response, query_flag, router_state
from workers.errors import ApiError

HEALTHY = b'{"status":"ok"}'
_PID_HEADER = {"X-Llama-Router-Pid": str(os.getpid())}


def build_info() -> str:
    try:
        return f"b{version('llama-router')}"
    except PackageNotFoundError:
        return "b0"


async def health(request: Request) -> Response:
    # which HTTP process answered: a connection stays with the process that accepted it
    return Response(HEALTHY, media_type="application/json", headers=_PID_HEADER)


async def props(request: Request) -> Response:
    name = request.query_params.get("model")
    config = router_state(request).config
    if not name and single_model.requested(config):
        name = next(iter(router_state(request).supervisor.models))  # as llama-server -m answers
    if name:
        return await model_props(request, name)
    return json_response(
        {
            "role": "router",
            "max_instances": config.models_max,
            "models_autoload": config.models_autoload,
            "model_alias": "llama-router",
            "model_path": "none",
            "default_generation_settings": {"params": None, "n_ctx": 0},
            "ui_settings": {},
            "build_info": build_info(),
            "cors_proxy_enabled": False,
            "http_processes": _http_pids(request),
            "unapplied_flags": [f"--{name}" for name in config.unapplied_flags],
            # --threads, and what is left of it for the models after other programs' load
            "cores": {
                "budget": config.threads,
                "free": router_state(request).supervisor.cores.free(),
            },
        }
    )


def _http_pids(request: Request) -> list[int]:
    processes = router_state(request).http_processes
    return processes.pids() if processes is not None else [os.getpid()]


async def model_props(request: Request, name: str) -> Response:
    """A model's own props, from what its worker reported; asking never wakes a sleeping one."""
    model = await started_model(request, name)
    info = model.info or {}
    return json_response(
        {
            "default_generation_settings": {
                "n_ctx": info.get("n_ctx", 0),
                "params": info.get("default_params", {}),
            },
            "total_slots": info.get("n_parallel", 1),
            "model_alias": model.id,
            "model_path": info.get("model_path", model.spec.path),
            "modalities": info.get("modalities", {"vision": False, "audio": False}),
            "chat_template": info.get("chat_template", ""),
            "bos_token": info.get("bos_token", ""),
            "eos_token": info.get("eos_token", ""),
            "build_info": build_info(),
            "is_sleeping": model.status is Status.SLEEPING,
            "kv_cache": info.get("kv_cache"),
            "unapplied_flags": [f"--{name}" for name in unapplied(model.spec.flags)],
            "threads": _threads_now(request, model),
        }
    )


def _threads_now(request: Request, model: Model) -> int:
    """The threads the model's worker decodes with now, its share of the cores (0 when idle)."""
    worker = model.worker
    if worker is None:
        return 0
    return router_state(request).supervisor.cores.threads_of(worker.cell)


async def started_model(request: Request, name: str) -> Model:
    """The model, started first if it has not reported its info (`?autoload=` as for a POST);
    a sleeping one stays asleep."""
    state = router_state(request)
    model = await find_model(state, name)
    if model is None:
        raise ApiError(400, f"model '{name}' not found")
    if model.info is None or model.status not in (Status.LOADED, Status.SLEEPING):
        autoload = query_flag(request, "autoload", state.config.models_autoload)
        if autoload:
            model = await with_files(state, model)
        lease = await state.supervisor.acquire(model, autoload, touch=False)
        state.supervisor.release(lease)
    return model


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/health", health, methods=["GET"]),
    Route("/props", props, methods=["GET"]),
]
