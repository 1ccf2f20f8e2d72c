"""A model's slots, as its worker reports them, and llama-server's slot save, restore and erase."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router import single_model
from router.control.state import find_model, with_files
from router.http.routes.common import JSON, query_flag, read_body, router_state
from router.http.routes.ops import started_model
from workers.errors import ApiError
from workers.schema import decode_body

# llama-server's fs_validate_filename, in short: one plain name, no folders.
_FILENAME = re.compile(r"[^/\\\x00]{1,255}")


class SlotRequest(msgspec.Struct):
    model: str | None = None
    filename: str | None = None


async def list_slots(request: Request) -> Response:
    """Every slot of the model: `is_processing`, and the request it runs or ran last (its
    prompt, params and counts). `?fail_on_no_slot=1` answers 503 when all are busy."""
    if not router_state(request).config.slots_endpoint:
        message = "This server does not support slots endpoint. Start it with `--slots`"
        raise ApiError(501, message)
    name = request.query_params.get("model") or _single_model(request)
    if not name:
        raise ApiError(400, "model name is missing from the request")
    model = await started_model(request, name)
    if model.worker is None:
        raise ApiError(503, f"model '{model.id}' is not running")
    answer = await model.worker.slot_action("list")
    if answer.status == 200 and request.query_params.get("fail_on_no_slot"):
        _fail_if_none_free(json.loads(answer.body))
    return Response(answer.body, status_code=answer.status, media_type=JSON)


def _single_model(request: Request) -> str | None:
    """Started as llama-server with one model (`-m`, `-hf`): that model, as llama-server."""
    state = router_state(request)
    if single_model.requested(state.config):
        return next(iter(state.supervisor.models))
    return None


def _fail_if_none_free(slots: list[dict[str, Any]]) -> None:
    if all(slot["is_processing"] for slot in slots):
        raise ApiError(503, "no slot available")


async def act_on_slot(request: Request) -> Response:
    """`?action=save|restore` with `{"model", "filename"}` keeps a slot's KV cache in a file
    under --slot-save-path or loads it back; `erase` empties the slot. A busy slot is acted on
    once its request is done."""
    state = router_state(request)
    folder = state.config.slot_save_path
    if not folder:
        message = "This server does not support slots action. Start it with `--slot-save-path`"
        raise ApiError(501, message)
    try:
        slot = int(request.path_params["id_slot"])
    except ValueError:
        raise ApiError(400, "Invalid slot ID") from None
    action = request.query_params.get("action")
    body = decode_body(await read_body(request), SlotRequest)
    path = ""
    if action in ("save", "restore"):
        filename = body.filename or ""
        if not _FILENAME.fullmatch(filename) or filename in (".", ".."):
            raise ApiError(400, "Invalid filename")
        path = f"{folder.rstrip('/')}/{filename}"
    elif action != "erase":
        raise ApiError(400, "Invalid action")
    name = body.model or request.query_params.get("model") or _single_model(request)
    if not name:
        raise ApiError(400, "model name is missing from the request")
    model = await find_model(state, name)
    if model is None:
        raise ApiError(400, f"model '{name}' not found")
    autoload = query_flag(request, "autoload", state.config.models_autoload)
    if autoload:
        model = await with_files(state, model)
    lease = await state.supervisor.acquire(model, autoload, touch=False)
    try:
        answer = await lease.worker.slot_action(action, slot, path)
    finally:
        state.supervisor.release(lease)
    return Response(answer.body, status_code=answer.status, media_type=JSON)


routes = [
    Route("/slots", list_slots, methods=["GET"]),
    Route("/slots/{id_slot}", act_on_slot, methods=["POST"]),
]
