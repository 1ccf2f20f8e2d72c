"""The router's parts and how they are built from the configuration."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from router.bundled import bundled_models
from router.catalog import FoundFiles, build_catalog
from router.config import RouterConfig
from router.downloads import Downloads
from router.events import EventHub
from router.presets import PresetError, Presets, load_presets
from router.relay import Relay
from router.streams import Streams
from router.supervisor import Model, Supervisor, check_startup
from workers.errors import ApiError


@dataclass
class RouterState:
    config: RouterConfig
    presets: Presets
    bundled: list[FoundFiles]
    supervisor: Supervisor
    relay: Relay
    streams: Streams
    events: EventHub
    downloads: Downloads
    loop: asyncio.AbstractEventLoop | None = None

    def stop_generations(self) -> None:
        """Shutting down: end every generation, so that every open stream closes."""
        self.streams.stop_all()
        self.relay.cancel_all()
        self.downloads.shutdown()
        self.events.close()


def reload_catalog(state: RouterState) -> None:
    """Re-read the models dir, the presets and the cache, and hand the result to the supervisor."""
    try:
        state.presets = load_presets(state.config.models_preset)
    except PresetError as error:
        raise ApiError(500, str(error)) from error
    state.supervisor.reload(build_catalog(state.config, state.presets, state.bundled))


def find_model(state: RouterState, name: str) -> Model | None:
    """A model by id or alias; a download that just finished is picked up on the way."""
    model = state.supervisor.find(name)
    if model is None and state.downloads.take_finished():
        reload_catalog(state)
        model = state.supervisor.find(name)
    return model


def build_state(config: RouterConfig) -> RouterState:
    presets = load_presets(config.models_preset)
    bundled = []
    if not config.models_dir and not config.models_preset:
        bundled = bundled_models(config.cache_dir)
    specs = build_catalog(config, presets, bundled)
    check_startup(specs, config)
    relay = Relay(config.response_buffer_bytes, release=lambda lease: supervisor.release(lease))
    supervisor = Supervisor(config, specs, on_wrote=relay.wake, on_worker_gone=relay.worker_gone)
    streams = Streams(supervisor, relay, config.stream_buffer_bytes, config.stream_ttl_seconds)
    events = EventHub()
    supervisor.subscribe(events.publish)
    downloads = Downloads(events.publish)
    return RouterState(config, presets, bundled, supervisor, relay, streams, events, downloads)
