"""Which models run, and when: states, the LRU victim, one FIFO queue, sleep, TTL and stops.

One owner: every change to the model table is an event posted to the inbox
(router/control/inbox.py), from the routes of every HTTP process, the workers and the clock;
the events are read one at a time and in order, and only their handlers write the table. What
the queue does next is decided by pure functions (router/control/policy.py); the handlers act
on it. Slow work (a worker starting or stopping) runs in tasks that post what became of it back
to the inbox. A request waits on the reply of its `Want`.

The inbox is read by the call that posts into an idle inbox, at once, until it is empty; an
event posted while another is handled waits its turn. Reading it from a task of its own would
cost every request two more turns of the event loop (0.1 ms of a 1 ms warm request, measured).

The rules, in the order the code applies them:
- A request for a loaded or sleeping model is served at once (a sleeping one is woken).
- A request for a model being stopped waits until it is unloaded, then loads it again.
- Otherwise it joins one FIFO queue; requests for one model share an entry (one eviction).
- The head of the queue takes a free slot; with none free, the least recently used idle model
  (nothing in flight, nobody waiting for it, not pinned, not queued) is stopped for it. A busy
  model is never stopped; when it goes idle the queue is looked at again.
- With no idle model at all, the least recently used busy one drains: it takes no new requests
  (they wait and reload it later), and once its current ones are done it is the victim.
- A client that leaves gives up its claim: an entry nobody waits for is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil

from router.catalog import ModelSpec
from router.config import RouterConfig
from router.control.cores import CoreMeter
from router.control.direct_routes import DirectRoutesPublisher, Reader
from router.control.inbox import (
    CatalogRead,
    ClientLeft,
    InboxEvent,
    LoadAsked,
    Released,
    RemoveAsked,
    RequestArrived,
    SentDirect,
    Stop,
    Tick,
    UnloadAsked,
    UpstreamChecked,
    Want,
    WorkerExited,
    WorkerReported,
)
from router.control.policy import Drain, Drop, Evict, Start, Undrain, next_step, pick_victim
from router.control.processes import SpareWorkers, WorkerProcess, apply_poll
from router.control.table import Lease, Model, Status, load_progress
from router.gguf_memory import memory_needed
from router.metrics import RouterMetrics
from router.model_settings import CACHE_TYPE_BYTES, model_settings
from router.upstream import UpstreamRoute
from workers.cores import CoreTable
from workers.errors import ApiError
from workers.protocol import (
    Ended,
    Event,
    Exit,
    LoadFailed,
    Loading,
    ModelSettings,
    Ready,
    Sleep,
    Slept,
    Wake,
    Woke,
)

log = logging.getLogger("llama-router")

_TICK_SECONDS = 1.0
# Under the cache dir: the KV caches of swapped-out models' slots (workers/engines/kept_slots.py).
KEPT_SLOTS_DIR = "slots"
# LLAMA_SERVER_DEBUG_FAKE_TIMING (a test hook of llama-server's router): how long each model load
# waits before it starts, and each request counts as in flight before it is sent.
FAKE_TIMING_SECONDS = 2.0


Publisher = Callable[[str, str, dict[str, Any] | None], None]


def unloadable(spec: ModelSpec, room: int) -> str | None:
    """Why a model cannot possibly load (no file, not a GGUF, bad settings, more memory than
    `room`), or None."""
    if spec.error or not spec.path:
        return spec.error or "no model file"
    try:
        settings = model_settings(spec.id, spec.path, spec.mmproj, spec.flags)
        extra = (settings.mmproj,) if settings.mmproj else ()
        need = memory_needed(
            spec.path,
            settings.ctx_size,
            extra,
            CACHE_TYPE_BYTES[settings.cache_type_k],
            CACHE_TYPE_BYTES[settings.cache_type_v],
        )
    except OSError as error:
        return f"cannot read {error.filename or spec.path}: {error.strerror}"
    except ValueError as error:  # not a GGUF, or a setting that is not a number
        return str(error)
    if need.total > room:
        return (
            f"not enough memory: it needs about {_gib(need.total)} (weights {_gib(need.weights)}, "
            f"context of {settings.ctx_size or 'the trained'} tokens {_gib(need.kv_cache)}), "
            f"and at most {_gib(room)} can be made free"
        )
    return None


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def check_startup(specs: dict[str, ModelSpec], config: RouterConfig) -> None:
    eager = sum(1 for spec in specs.values() if spec.load_on_startup)
    if config.models_max > 0 and eager > config.models_max:
        raise ValueError(
            f"number of models to load on startup ({eager}) exceeds models_max "
            f"({config.models_max})"
        )


class Supervisor:
    def __init__(
        self,
        config: RouterConfig,
        specs: dict[str, ModelSpec],
        on_ended: Callable[[int], bool],
        on_worker_gone: Callable[[WorkerProcess], None],
        metrics: RouterMetrics,
        settle_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, Model] = {spec.id: Model(spec) for spec in specs.values()}
        self.names: dict[str, str] = {}
        self._rebuild_names()
        self.queue: deque[Model] = deque()
        self._on_ended = on_ended
        # A client may have its whole answer (and ask for the next thing) before its worker's
        # `Ended` arrives: choosing a victim first counts the requests whose rings are done.
        self._settle_finished = settle_finished
        self._on_worker_gone = on_worker_gone
        self._publishers: list[Publisher] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._inbox: deque[InboxEvent] = deque()
        self._reading = False  # an event is being handled: a new one waits its turn
        self._wants: list[Want] = []  # requests waiting for their model, in arrival order
        self._loads: list[tuple[Model, asyncio.Future[None]]] = []  # waiting for their victim
        self._removals: list[tuple[Model, asyncio.Future[None]]] = []  # waiting for the worker
        self._upstreams_down: dict[str, str | None] = {}  # why each upstream server is not up
        self._catalog_readers: list[Callable[[], None]] = []
        self._direct_routes = DirectRoutesPublisher(enabled=not config.debug_fake_timing)
        apply_poll(config.poll)
        self.cores = CoreTable(config.threads)
        self._core_meter = CoreMeter(self.cores, config.threads)
        self._spares = SpareWorkers(self.cores)

    # --- names --------------------------------------------------------------------------------

    def _rebuild_names(self) -> None:
        self.names = {model_id: model_id for model_id in self.models}
        for model in self.models.values():
            for alias in model.spec.aliases:
                self.names.setdefault(alias, model.id)

    def find(self, name: str) -> Model | None:
        model_id = self.names.get(name)
        return self.models[model_id] if model_id is not None else None

    def upstream_routes(self) -> dict[str, UpstreamRoute]:
        """Every name (ids and aliases) of the models that other servers serve."""
        return {
            name: UpstreamRoute(model.id, model.spec.upstream)
            for name, model_id in self.names.items()
            if (model := self.models[model_id]).spec.upstream is not None
        }

    def on_catalog(self, reader: Callable[[], None]) -> Callable[[], None]:
        """Call `reader` after every new catalog; returns how to stop."""
        self._catalog_readers.append(reader)
        return lambda: self._catalog_readers.remove(reader)

    def on_direct_routes(self, reader: Reader) -> Callable[[], None]:
        """Call `reader` with the direct routes now and whenever they change; returns how to
        stop."""
        return self._direct_routes.subscribe(reader, self.models, self.names)

    # --- events out ---------------------------------------------------------------------------

    def subscribe(self, publisher: Publisher) -> Callable[[], None]:
        self._publishers.append(publisher)
        return lambda: self._publishers.remove(publisher)

    def _publish(self, model_id: str, event: str, data: dict[str, Any] | None = None) -> None:
        for publisher in list(self._publishers):
            publisher(model_id, event, data)

    def _changed(self, model: Model, **extra: Any) -> None:
        model.mark_changed()
        self._publish(model.id, "status_change", {"status": model.public_status, **extra})

    # --- requests -----------------------------------------------------------------------------

    async def acquire(self, model: Model, autoload: bool, touch: bool = True) -> Lease:
        """Wait until `model` is ready for this request; loading it (and evicting) if needed."""
        return await self.lease_for(self.want(model, autoload, touch))

    def want(self, model: Model, autoload: bool, touch: bool = True) -> Want:
        """Claim `model` for a request; the claim's reply is the lease (or why not)."""
        want = Want(model, autoload, touch, asyncio.get_running_loop().create_future())
        self.post(RequestArrived(want))
        return want

    async def lease_for(self, want: Want) -> Lease:
        try:
            lease = await asyncio.shield(want.reply)
        except asyncio.CancelledError:
            self.post(ClientLeft(want))
            raise
        self._count_wait(want, lease)
        if self.config.debug_fake_timing:
            await self._hold_busy(lease)
        return lease

    def granted_now(self, want: Want) -> Lease | None:
        """The lease, if the claim was granted as the inbox read it; otherwise the claim is
        withdrawn and None (the request then waits with `acquire`)."""
        reply = want.reply
        if self.config.debug_fake_timing or not reply.done() or reply.exception() is not None:
            self.post(ClientLeft(want))
            return None
        lease = reply.result()
        self._count_wait(want, lease)
        return lease

    def _count_wait(self, want: Want, lease: Lease) -> None:
        lease.waited = time.monotonic() - want.arrived
        if want.touch:
            self.metrics.queue_wait.labels(want.model.id).observe(lease.waited)

    async def _hold_busy(self, lease: Lease) -> None:
        """LLAMA_SERVER_DEBUG_FAKE_TIMING, as llama-server's router: a request counts as in
        flight for a while before it is sent, so tests can keep a model busy with a quick one."""
        try:
            await asyncio.sleep(FAKE_TIMING_SECONDS)
        except BaseException:
            self.release(lease)  # the client left meanwhile
            raise

    def release(self, lease: Lease) -> None:
        """The worker let go of the request. Said while an event is handled (a worker's report),
        the lease goes at once, before the next decision."""
        if self._reading:
            self._release(lease)
        else:
            self.post(Released(lease))

    def _arrived(self, want: Want) -> None:
        model = want.model
        if model.spec.upstream is not None:  # its requests are proxied; it has no worker here
            base = model.spec.upstream.base
            want.reply.set_exception(ApiError(400, f"model {model.id} is served by {base}"))
            return
        ready = model.status in (Status.LOADED, Status.SLEEPING)
        if not ready and model.wanted >= self.config.max_waiting_per_model:
            message = f"too many requests waiting for model {model.id}, try again later"
            want.reply.set_exception(ApiError(503, message))
            return
        model.wanted += 1
        want.failed_loads = model.failed_loads
        self._wants.append(want)

    def _left(self, want: Want) -> None:
        if want in self._wants:
            self._settle_want(want, None)
        elif want.reply.done() and not want.reply.cancelled() and want.reply.exception() is None:
            self._release(want.reply.result())  # granted as the client left

    def _answer(self, want: Want) -> Lease | ApiError | None:
        """A lease for the request, why it cannot have one, or None while it must wait."""
        model = want.model
        if model.status is Status.SLEEPING and not model.draining:
            self._wake(model)
        lease = self._lease_now(model, want.touch)
        if lease is not None:
            return lease
        if model.removed:
            return ApiError(400, f"model '{model.id}' not found")
        if model.status is not Status.UNLOADED:
            return None
        if model.failed_loads != want.failed_loads:
            return ApiError(500, self._load_failure(model))
        if not want.autoload:
            return ApiError(400, "model is not loaded")
        if model not in self.queue:  # checked once, by the request that queues it
            try:
                self._refuse_if_unloadable(model)
            except ApiError as error:
                return error
            if self._held(want):
                return None
            self.queue.append(model)
        self._pump()
        return None

    def _held(self, want: Want) -> bool:
        """Fake timing: the load a request would queue starts later, as in llama-server."""
        if not self.config.debug_fake_timing or want.held_until < 0:
            return False
        now = time.monotonic()
        if want.held_until == 0:
            want.held_until = now + FAKE_TIMING_SECONDS
            asyncio.get_running_loop().call_later(FAKE_TIMING_SECONDS, self.post, Tick(now))
        if now < want.held_until:
            return True
        want.held_until = -1.0  # once
        return False

    def _settle_want(self, want: Want, answer: Lease | ApiError | None) -> None:
        self._wants.remove(want)
        model = want.model
        model.wanted -= 1
        if isinstance(answer, Lease):
            want.reply.set_result(answer)
        elif isinstance(answer, ApiError):
            want.reply.set_exception(answer)
        else:
            want.reply.cancel()
        if model.wanted == 0 and model in self.queue:
            self.queue.remove(model)
            self._pump()

    def adopt(self, model_id: str, worker_pid: int) -> Lease | None:
        """The lease of a request an HTTP process sent straight to the worker of `worker_pid`
        (workers/direct.py); None when that worker is no longer the model's."""
        sent = SentDirect(model_id, worker_pid)
        self.post(sent)
        return sent.lease

    def _adopt(self, sent: SentDirect) -> None:
        model = self.models.get(sent.model_id)
        worker = model.worker if model is not None else None
        if model is None or worker is None or worker.pid != sent.worker_pid:
            return
        sent.lease = self._lease(model, worker, touch=True)

    @staticmethod
    def _served_directly(model: Model) -> None:
        """A request that an HTTP process sent straight to the worker ended before that process
        told of it (it tells only of those still running a moment later): the model was used."""
        model.last_used = time.monotonic()
        if model.in_flight == 0:
            model.idle_since = model.last_used

    def _lease_now(self, model: Model, touch: bool) -> Lease | None:
        if not model.ready or model.worker is None:
            return None
        return self._lease(model, model.worker, touch)

    def _lease(self, model: Model, worker: WorkerProcess, touch: bool) -> Lease:
        model.in_flight += 1
        if touch:
            model.last_used = time.monotonic()
        return Lease(model, worker, touch)

    def _release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        model = lease.model
        model.in_flight -= 1
        now = time.monotonic()
        if lease.touch:
            model.last_used = now
        if model.in_flight == 0:
            model.idle_since = now
            self._pump()

    @staticmethod
    def _load_failure(model: Model) -> str:
        reason = model.load_error or model.spec.error or f"exit code {model.exit_code}"
        return f"model name={model.id} failed to load: {reason}"

    # --- explicit load / unload ---------------------------------------------------------------

    async def load(self, model: Model) -> None:
        """POST /models/load: start now, evicting the LRU idle model at the cap; 503 if none."""
        if self.config.debug_fake_timing:  # before anything else, as llama-server's load()
            await asyncio.sleep(FAKE_TIMING_SECONDS)
        await self._ask(LoadAsked, model)

    async def unload(self, model: Model) -> None:
        await self._ask(UnloadAsked, model)

    async def remove(self, model: Model) -> None:
        """DELETE /models: no request may start it again while its files go; once this
        returns its worker is gone."""
        await self._ask(RemoveAsked, model)

    async def _ask(self, kind: type[LoadAsked | UnloadAsked | RemoveAsked], model: Model) -> None:
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.post(kind(model, reply))
        await asyncio.shield(reply)

    def _load(self, model: Model, reply: asyncio.Future[None]) -> None:
        if model.spec.upstream is not None:
            reply.set_exception(_remote(model))
            return
        if model.status.running:
            reply.set_exception(ApiError(400, "model is already running"))
            return
        try:
            self._refuse_if_unloadable(model)
        except ApiError as error:
            reply.set_exception(error)
            return
        self._settle_finished()
        if self._slot_free():
            self._start(model)
            reply.set_result(None)
            return
        victim = pick_victim(self.models.values(), {model.id, *(m.id for m in self.queue)})
        if victim is None:
            reply.set_exception(ApiError(503, "model limit reached, try again later"))
            return
        log.info("evicting %s to make room for %s", victim.id, model.id)
        self.metrics.evictions.labels(victim.id).inc()
        # First in line for the slot the victim frees; the queue starts it once the victim is gone.
        if model in self.queue:
            self.queue.remove(model)
        self.queue.appendleft(model)
        model.wanted += 1
        self._stop(victim)
        self._loads.append((model, reply))

    def _answer_load(self, model: Model, reply: asyncio.Future[None]) -> bool:
        """Whether an explicit load that waited for its victim is over (started, or dropped)."""
        if model.status is Status.UNLOADED and model in self.queue:
            return False
        model.wanted -= 1
        if model.wanted == 0 and model in self.queue:
            self.queue.remove(model)
        if not reply.done():
            reply.set_result(None)
        return True

    def _unload(self, model: Model, reply: asyncio.Future[None]) -> None:
        if model.spec.upstream is not None:
            reply.set_exception(_remote(model))
            return
        if not model.status.running:
            reply.set_exception(ApiError(400, "model is not running"))
            return
        if model.status is not Status.STOPPING:
            self._stop(model)
        reply.set_result(None)

    def _remove(self, model: Model, reply: asyncio.Future[None]) -> None:
        model.removed = True
        if model.status.running and model.status is not Status.STOPPING:
            self._stop(model)
        self._removals.append((model, reply))

    def _refuse_if_unloadable(self, model: Model) -> None:
        """Refused before anything is evicted for it. Room is what is free now plus what
        unloading every running model would give back."""
        running = (m.worker.resident_bytes() for m in self.models.values() if m.worker)
        room = psutil.virtual_memory().available + sum(size or 0 for size in running)
        problem = unloadable(model.spec, room)
        if problem:
            model.load_error = problem
            raise ApiError(500, f"model name={model.id} failed to load: {problem}")

    # --- scheduling ---------------------------------------------------------------------------

    def _running(self) -> int:
        return sum(1 for model in self.models.values() if model.status.running)

    def _slot_free(self) -> bool:
        return self.config.models_max <= 0 or self._running() < self.config.models_max

    def _pump(self) -> None:
        """Act on the queue's next steps (router/control/policy.py) until it has to wait."""
        while True:
            if self.queue:
                self._settle_finished()
            step = next_step(self.queue, self.models.values(), self.config.models_max)
            match step:
                case Drop():
                    self.queue.popleft()
                case Start(model=model):
                    self.queue.popleft()
                    self._start(model)
                case Evict(victim=victim, head=head):
                    log.info("evicting %s to make room for %s", victim.id, head.id)
                    self.metrics.evictions.labels(victim.id).inc()
                    self._stop(victim)
                    return
                case Drain(model=model, head=head):
                    log.info("draining %s to make room for %s", model.id, head.id)
                    model.draining = True
                    model.mark_changed()  # no event: it only stops taking requests
                    return
                case Undrain(models=models):
                    for model in models:
                        log.info("no longer draining %s: nobody waits for its slot", model.id)
                        model.draining = False
                        model.mark_changed()
                    return
                case None:
                    return

    def _start(self, model: Model) -> None:
        model.draining = False
        model.failed = False
        model.exit_code = None
        model.load_error = None
        model.info = None
        try:
            if model.spec.error or not model.spec.path:
                raise ValueError(model.spec.error or "no model file")
            settings = self._with_kept_slots(
                model_settings(model.id, model.spec.path, model.spec.mmproj, model.spec.flags)
            )
            worker = self._spares.take()
            worker.load(
                settings,
                on_event=lambda event: self.post(WorkerReported(model, worker, event)),
                on_exit=lambda code: self.post(WorkerExited(model, worker, code)),
            )
        except (ValueError, OSError) as error:
            model.load_error = str(error)
            model.failed = True
            model.failed_loads += 1
            self.metrics.load_failures.labels(model.id).inc()
            log.error("cannot start %s: %s", model.id, error)
            self._changed(model)
            return
        model.worker = worker
        model.status = Status.LOADING
        model.progress = 0.0
        model.load_started = time.monotonic()
        log.info("loading %s (pid %d)", model.id, worker.pid)
        model.mark_changed()
        self._publish(model.id, "model_status", {"status": "loading"})

    def _with_kept_slots(self, settings: ModelSettings) -> ModelSettings:
        """Where the model's slots are kept while it is swapped out: a folder per model and
        settings, since a KV cache fits only the weights and context it was made with."""
        if self.config.slot_keep_bytes <= 0:
            return settings
        digest = hashlib.sha256(msgspec.json.encode(settings)).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.model_id)
        folder = Path(self.config.cache_dir) / KEPT_SLOTS_DIR / f"{name}-{digest}"
        return msgspec.structs.replace(
            settings, kept_slots_dir=str(folder), kept_slots_bytes=self.config.slot_keep_bytes
        )

    def _stop(self, model: Model, recycle: bool = True) -> None:
        worker = model.worker
        assert worker is not None
        # A worker still loading cannot read its pipe: it is stopped at once. A loaded one finishes
        # the requests already sent to it (they precede Exit on the pipe) within its stop-timeout.
        loading = model.status is Status.LOADING
        model.status = Status.STOPPING
        model.mark_changed()  # no event: clients see it "loaded" until it is gone
        if loading:
            self._spawn_task(worker.stop(Exit(), 0.0))
        elif recycle:
            self._spawn_task(self._retire(model, worker))
        else:
            self._spawn_task(worker.stop(Exit(), model.spec.stop_timeout))

    async def _retire(self, model: Model, worker: WorkerProcess) -> None:
        """Unload through the worker itself and keep its process as the next spare."""
        if await worker.retire(model.spec.stop_timeout):
            worker.unbind()
            self.post(WorkerExited(model, worker, 0, spare=True))

    def _wake(self, model: Model) -> None:
        assert model.worker is not None
        model.worker.send(Wake())
        model.status = Status.LOADED
        model.idle_since = time.monotonic()
        self._changed(model)

    def _spawn_task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- worker reports -----------------------------------------------------------------------

    def _on_event(self, model: Model, worker: WorkerProcess, event: Event) -> None:
        match event:
            case Ended():
                if not self._on_ended(event.request_id):
                    self._served_directly(model)
            case _ if model.worker is not worker:
                return
            case Loading():
                model.progress = event.value
                progress = load_progress(event.value)
                self._publish(
                    model.id, "status_change", {"status": "loading", "progress": progress}
                )
            case Ready():
                model.status = Status.LOADED
                model.info = event.info
                model.direct = event.direct
                model.progress = None
                model.last_used = model.idle_since = time.monotonic()
                self.metrics.loads.labels(model.id).inc()
                self.metrics.load_seconds.labels(model.id).observe(
                    model.idle_since - model.load_started
                )
                log.info("%s is loaded", model.id)
                self._changed(model, info=event.info)
                self._pump()
            case LoadFailed():
                model.load_error = event.message
                log.error("%s", event.message)
            case Woke():
                model.direct = event.direct
                model.mark_changed()
            case Slept():
                pass

    def _on_exit(self, model: Model, worker: WorkerProcess, code: int) -> None:
        self._on_worker_gone(worker)
        if model.worker is not worker:
            return
        model.engine.retire(worker.counters)
        asked = model.status is Status.STOPPING
        if model.status is Status.LOADING or model.load_error:
            model.failed_loads += 1
            self.metrics.load_failures.labels(model.id).inc()
        if not asked:
            model.failed = True
            model.exit_code = code
            self.metrics.worker_deaths.labels(model.id).inc()
            log.error("worker of %s exited unexpectedly with %s", model.id, code)
        model.worker = None
        model.status = Status.UNLOADED
        model.draining = False
        model.progress = None
        self._changed(model, exit_code=code)
        if model.removed:
            self._forget(model)
        self._pump()

    # --- reload -------------------------------------------------------------------------------

    async def reload(self, specs: dict[str, ModelSpec]) -> None:
        """Adopt a fresh catalog: stop models whose source vanished or whose settings changed."""
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.post(CatalogRead(specs, reply))
        await asyncio.shield(reply)

    def _reload(self, specs: dict[str, ModelSpec]) -> None:
        for model in list(self.models.values()):
            fresh = specs.get(model.id)
            if fresh is None:
                model.removed = True
                if model.status.running:
                    if model.status is not Status.STOPPING:
                        self._stop(model)
                else:
                    self._forget(model)
                continue
            model.removed = False  # its files are (still or again) there
            changed = not model.spec.same_settings(fresh)
            model.spec = fresh
            if not changed:
                continue
            model.failed = False
            model.exit_code = None
            if model.status.running and model.status is not Status.STOPPING:
                log.info("settings of %s changed: unloading it", model.id)
                self._stop(model)
        for model_id, spec in specs.items():
            if model_id not in self.models:
                self.models[model_id] = Model(spec)
            if spec.upstream is not None and spec.upstream.base in self._upstreams_down:
                model = self.models[model_id]
                model.checked, model.unreachable = True, self._upstreams_down[spec.upstream.base]
        self._rebuild_names()
        self._direct_routes.names_changed()
        self._publish("*", "models_reload", None)
        for reader in list(self._catalog_readers):
            reader()

    def _forget(self, model: Model) -> None:
        if self.models.get(model.id) is model:
            del self.models[model.id]
            self._rebuild_names()
        model.mark_changed()

    # --- time ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the `load-on-startup` models and start the clock."""
        self._spares.start()
        for model in self.models.values():
            if model.spec.load_on_startup:
                self._start(model)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(_TICK_SECONDS)
            self.post(Tick(time.monotonic()))

    def _tick(self, now: float) -> None:
        self._core_meter.measure()
        sleep_after = self.config.sleep_idle_seconds
        for model in self.models.values():
            if self._hung(model, now) and model.worker is not None:
                log.error("worker of %s stopped answering: killing it", model.id)
                model.worker.kill()
                continue
            if model.status is not Status.LOADED or not model.idle:
                continue
            idle_for = now - model.idle_since
            if model.spec.ttl is not None and idle_for >= model.spec.ttl:
                log.info("%s idle for %.0fs: unloading (ttl)", model.id, idle_for)
                self._stop(model)
            elif sleep_after is not None and idle_for >= sleep_after and model.worker:
                model.worker.send(Sleep())
                model.status = Status.SLEEPING
                self._changed(model)

    def _upstream_checked(self, base: str, unreachable: str | None) -> None:
        self._upstreams_down[base] = unreachable
        for model in self.models.values():
            upstream = model.spec.upstream
            if upstream is None or upstream.base != base:
                continue
            if not model.checked or model.unreachable != unreachable:
                model.checked, model.unreachable = True, unreachable
                self._changed(model)

    def _hung(self, model: Model, now: float) -> bool:
        worker = model.worker
        if worker is None or model.status not in (Status.LOADED, Status.SLEEPING):
            return False
        return worker.silent_for(now) > self.config.heartbeat_seconds

    async def shutdown(self) -> None:
        """Stop every worker (none is kept for later) and wait until they are gone."""
        if self._ticker is not None:
            self._ticker.cancel()
        reply: asyncio.Future[list[Awaitable[int]]] = asyncio.get_running_loop().create_future()
        self.post(Stop(reply))
        stops = await reply
        await asyncio.gather(self._spares.stop(), *stops, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _stop_all(self, reply: asyncio.Future[list[Awaitable[int]]]) -> None:
        for model in self.models.values():
            if model.worker is not None and model.status is not Status.STOPPING:
                self._stop(model, recycle=False)
        reply.set_result([m.worker.wait() for m in self.models.values() if m.worker is not None])

    # --- the inbox ----------------------------------------------------------------------------

    def post(self, event: InboxEvent) -> None:
        self._inbox.append(event)
        if self._reading:
            return  # the reading under way comes to it
        self._reading = True
        try:
            while self._inbox:
                self._read(self._inbox.popleft())
            self._direct_routes.refresh(self.models, self.names)
        finally:
            self._reading = False

    def _read(self, event: InboxEvent) -> None:
        try:
            self._handle(event)
            self._answer_waiting()
        except Exception as error:  # a bug in one handler must not stop the scheduling
            log.exception("supervisor: handling %s failed", type(event).__name__)
            _fail_reply(event, ApiError(500, f"internal error: {type(error).__name__}"))

    def _handle(self, event: InboxEvent) -> None:
        match event:
            case RequestArrived(want=want):
                self._arrived(want)
            case ClientLeft(want=want):
                self._left(want)
            case Released(lease=lease):
                self._release(lease)
            case SentDirect():
                self._adopt(event)
            case LoadAsked(model=model, reply=reply):
                self._load(model, reply)
            case UnloadAsked(model=model, reply=reply):
                self._unload(model, reply)
            case RemoveAsked(model=model, reply=reply):
                self._remove(model, reply)
            case CatalogRead(specs=specs, reply=reply):
                self._reload(specs)
                reply.set_result(None)
            case WorkerReported(model=model, worker=worker, event=report):
                self._on_event(model, worker, report)
            case WorkerExited(model=model, worker=worker, code=code, spare=spare):
                self._on_exit(model, worker, code)
                if spare:
                    self._spares.offer(worker)
            case UpstreamChecked(base=base, unreachable=unreachable):
                self._upstream_checked(base, unreachable)
            case Tick(now=now):
                self._tick(now)
            case Stop(reply=reply):
                self._stop_all(reply)

    def _answer_waiting(self) -> None:
        """After every event: answer the requests, loads and removals it settled, until one
        more pass changes nothing (an answer may start or wake a model for the next)."""
        while self._wants or self._loads or self._removals:
            before = self._table_version()
            for want in list(self._wants):
                answer = self._answer(want)
                if answer is not None:
                    self._settle_want(want, answer)
            self._loads = [(m, r) for m, r in self._loads if not self._answer_load(m, r)]
            for model, reply in [(m, r) for m, r in self._removals if not m.status.running]:
                self._removals.remove((model, reply))
                reply.set_result(None)
            if self._table_version() == before:
                return

    def _table_version(self) -> tuple[int, int, int]:
        versions = sum(model.version for model in self.models.values())
        return versions, len(self._wants), len(self.queue)


def _remote(model: Model) -> ApiError:
    base = model.spec.upstream.base if model.spec.upstream else ""
    return ApiError(400, f"model {model.id} is served by {base}: it is not loaded or unloaded here")


def _fail_reply(event: InboxEvent, error: ApiError) -> None:
    """Whoever waits on the event hears of the failure instead of waiting forever."""
    reply = event.want.reply if isinstance(event, RequestArrived) else getattr(event, "reply", None)
    if reply is not None and not reply.done():
        reply.set_exception(error)
