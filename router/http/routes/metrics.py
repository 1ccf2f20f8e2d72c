"""`GET /metrics`: the whole router's figures, or with `?model=` one model's, as llama-server."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router import single_model
from router.http.routes.common import router_state
from router.http.routes.ops import started_model
from router.metrics import CONTENT_TYPE, model_view, one_model_page
from workers.errors import ApiError


async def metrics(request: Request) -> Response:
    """Prometheus text: every model's `llamacpp:*` figures with a `model` label and the router's
    `llamarouter_*` figures; `?model=X` gives that model's figures alone (started first, as
    llama-server's router does), without the label, as llama-server's own page."""
    state = router_state(request)
    if not state.config.metrics_endpoint:
        message = "This server does not support metrics endpoint. Start it with `--metrics`"
        raise ApiError(501, message)
    name = request.query_params.get("model")
    if not name and single_model.requested(state.config):
        name = next(iter(state.supervisor.models))
    if name:
        page = one_model_page(model_view(await started_model(request, name)))
    else:
        page = state.metrics.page()
    headers = {"Process-Start-Time-Unix": str(state.metrics.started)}
    return Response(page, media_type=CONTENT_TYPE, headers=headers)


routes = [Route("/metrics", metrics, methods=["GET"])]
