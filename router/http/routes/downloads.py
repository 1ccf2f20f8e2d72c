"""Adding models to the cache (POST /models) and removing them (DELETE /models)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router import hf_cache
from router.catalog import CACHE_MODELS_DIR
from router.control.downloads import resolve
from router.control.state import find_model, reload_catalog
from router.http.routes.common import read_body, router_state, success
from workers.errors import ApiError
from workers.schema import decode_body


class AddModel(msgspec.Struct):
    model: str
    url: str | None = None


async def add_model(request: Request) -> Response:
    state = router_state(request)
    body = decode_body(await read_body(request), AddModel)
    if not body.model.strip():
        raise ApiError(400, "model must be a non-empty string")
    job = await asyncio.to_thread(resolve, body.model, body.url, state.config.cache_dir)
    if await find_model(state, job.model_id) is not None:
        raise ApiError(400, f"model '{job.model_id}' already exists")
    state.downloads.start(job)
    return success()


async def remove_model(request: Request) -> Response:
    state = router_state(request)
    name = request.query_params.get("model", "")
    if not name:
        raise ApiError(400, "model must be a non-empty string")
    model = await find_model(state, name)
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    if not model.spec.can_remove or model.spec.path is None:
        raise ApiError(400, f"model '{model.id}' is not removable (not from the cache)")
    cache_dir = state.config.cache_dir
    hub_layout = hf_cache.is_hub_path(cache_dir, model.spec.path)
    folder = None if hub_layout else _cache_folder(Path(model.spec.path), Path(cache_dir))
    await state.supervisor.remove(model)
    if folder is None:
        await asyncio.to_thread(hf_cache.remove_cached, cache_dir, model.id)
    else:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    await reload_catalog(state)
    state.events.publish(model.id, "model_remove")
    return success()


def _cache_folder(model_file: Path, cache_dir: Path) -> Path:
    """The model's own folder, and only if it really lies inside the cache's models folder."""
    models = (cache_dir / CACHE_MODELS_DIR).resolve()
    folder = model_file.resolve().parent
    if folder.parent != models:
        raise ApiError(400, "model files are not in a cache folder of their own")
    return folder


routes = [
    Route("/models", add_model, methods=["POST"]),
    Route("/models", remove_model, methods=["DELETE"]),
]
