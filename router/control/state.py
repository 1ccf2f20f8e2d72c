"""The router's parts and how they are built from the configuration."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router import hub, single_model
from router.bundled import bundled_models
from router.catalog import FoundFiles, ModelSpec, build_catalog
from router.config import RouterConfig
from router.control.dispatch import Dispatch
from router.control.downloads import Downloads
from router.control.redis_mirror import RedisMirror
from router.control.sessions import Streams
from router.control.supervisor import Supervisor, check_startup
from router.control.table import Model
from router.control.upstreams import UpstreamWatch
from router.events import EventHub
from router.metrics import RouterMetrics, StateCollector, model_view, share_between_processes
from router.presets import PresetError, Presets, load_presets
from router.upstream import UpstreamClient, UpstreamServer
from workers.errors import ApiError
from workers.ring import sweep_stale_segments

if TYPE_CHECKING:
    from router.control.http_processes import HttpProcesses

log = logging.getLogger("llama-router")


@dataclass
class RouterState:
    config: RouterConfig
    presets: Presets
    bundled: list[FoundFiles]
    supervisor: Supervisor
    dispatch: Dispatch
    streams: Streams
    events: EventHub
    downloads: Downloads
    metrics: RouterMetrics
    upstreams: UpstreamWatch
    upstream_client: UpstreamClient  # the main process's, for sessions and its own routes
    http_processes: HttpProcesses | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _cleanups: set[asyncio.Task[None]] = field(default_factory=set)

    def stop_generations(self) -> None:
        """Shutting down: end every generation, so that every open stream closes, and ask the
        other HTTP processes to finish."""
        self.streams.stop_all()
        self.dispatch.cancel_all()
        self.downloads.shutdown()
        self.events.close()
        if self.http_processes is not None:
            self.http_processes.stop_soon()

    def forget_http_process(self, pid: int) -> None:
        """An HTTP process died: end the generations it was serving (their models are free at
        once); once their workers let go, unmap its rings and remove them."""
        finished = self.dispatch.cancel_from(pid)

        async def clean_up() -> None:
            await asyncio.gather(*finished, return_exceptions=True)
            self.dispatch.forget(pid)
            removed = sweep_stale_segments()
            log.info("removed %d shared-memory segments of HTTP process %d", len(removed), pid)

        task = asyncio.get_running_loop().create_task(clean_up())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)


async def reload_catalog(state: RouterState) -> None:
    """Re-read the models dir, the presets and the cache, and hand the result to the supervisor."""
    try:
        state.presets = load_presets(state.config.models_preset)
    except PresetError as error:
        raise ApiError(500, str(error)) from error
    specs = catalog(state.config, state.presets, state.bundled, state.upstreams.listed)
    await state.supervisor.reload(specs)


def catalog(
    config: RouterConfig,
    presets: Presets,
    bundled: list[FoundFiles],
    listed: dict[UpstreamServer, list[str]] | None = None,
) -> dict[str, ModelSpec]:
    """The one model of `-m`/`-hf`, else every model of every source."""
    if single_model.requested(config):
        return single_model.catalog(config)
    return build_catalog(config, presets, bundled, listed)


async def find_model(state: RouterState, name: str) -> Model | None:
    """A model by id or alias; a download that just finished is picked up on the way."""
    model = state.supervisor.find(name)
    if model is None and state.downloads.take_finished():
        await reload_catalog(state)
        model = state.supervisor.find(name)
    return model


async def with_files(state: RouterState, model: Model) -> Model:
    """A preset whose `hf-repo` is not in the cache yet gets it now, as llama-server's model
    instance fetches its `-hf` on its first start; then the model as the catalog has it."""
    spec = model.spec
    if spec.path is not None or spec.hf_repo is None:
        return model
    failed = f"model name={model.id} failed to load"
    try:
        found = await asyncio.to_thread(
            hub.plan, spec.hf_repo, spec.hf_file, state.config.cache_dir
        )
        if found.preset is not None:
            raise ApiError(500, f"{spec.hf_repo} holds presets, not a model")
        await state.downloads.fetch(found.job)
    except ApiError as error:
        raise ApiError(500, f"{failed}: {error.message}") from error
    await reload_catalog(state)
    fresh = state.supervisor.find(model.id)
    if fresh is None or fresh.spec.path is None:
        raise ApiError(500, f"{failed}: {spec.hf_repo} is not in the cache after its download")
    return fresh


async def model_for_request(state: RouterState, name: str | None) -> Model | None:
    """The model a request names. Naming none, it gets the only model listed, if there is one;
    serving one model as `llama-server -m` does, any name gets that model (llama-server does not
    look at the name then)."""
    model = await find_model(state, name) if name else None
    if model is not None:
        return model
    listed = [model for model in state.supervisor.models.values() if not model.spec.hidden]
    if len(listed) == 1 and (not name or single_model.requested(state.config)):
        return listed[0]
    return None


def build_state(config: RouterConfig) -> RouterState:
    presets = load_presets(config.models_preset)
    bundled = []
    if not (config.models_dir or config.models_preset or single_model.requested(config)):
        bundled = bundled_models(config.cache_dir)
    specs = catalog(config, presets, bundled)
    check_startup(specs, config)
    shared = config.http_workers > 1  # every HTTP process counts its requests
    metrics = RouterMetrics(share_between_processes() if shared else None)
    dispatch = Dispatch(release=lambda lease: supervisor.release(lease))
    supervisor = Supervisor(
        config,
        specs,
        on_ended=dispatch.ended,
        on_worker_gone=dispatch.worker_gone,
        metrics=metrics,
        settle_finished=dispatch.settle_finished,
    )
    upstream_client = UpstreamClient(config.timeout)
    mirror = None
    if config.sessions_redis:
        mirror = RedisMirror(config.sessions_redis, config.stream_ttl_seconds)
    streams = Streams(
        supervisor,
        dispatch,
        upstream_client,
        config.stream_buffer_bytes,
        config.stream_ttl_seconds,
        mirror=mirror,
    )
    events = EventHub()
    supervisor.subscribe(events.publish)
    downloads = Downloads(events.publish, metrics.download_bytes.inc)
    metrics.watch(
        StateCollector(
            models=lambda: [model_view(model) for model in supervisor.models.values()],
            sessions=streams.held,
            http_processes=lambda: state.http_processes.count if state.http_processes else 1,
        )
    )
    upstreams = UpstreamWatch(config, supervisor, lambda: reload_catalog(state))
    state = RouterState(
        config,
        presets,
        bundled,
        supervisor,
        dispatch,
        streams,
        events,
        downloads,
        metrics,
        upstreams,
        upstream_client,
    )
    return state
