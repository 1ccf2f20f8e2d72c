"""The one place that creates, watches and stops model worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil

from router.messages import read_when_ready
from workers import model as model_worker
from workers.cores import CoreTable
from workers.engine_counters import EngineCounters
from workers.errors import ApiError
from workers.protocol import (
    Command,
    CommandCodec,
    Event,
    EventCodec,
    Exit,
    Load,
    ModelSettings,
    Released,
    SlotAction,
    SlotAnswer,
)

log = logging.getLogger("llama-router")

_SPAWN = multiprocessing.get_context("spawn")
_TERM_GRACE = 1.0
# libgomp's spin count when nothing sets it: what llama-server's default `--poll 50` maps to
_OPENMP_DEFAULT_SPIN = 300_000


def apply_poll(poll: int | None) -> None:
    """llama-server's `--poll` (0-100: how long a waiting thread polls before it sleeps) for
    the workers' llama.cpp, whose threads come from OpenMP here: GOMP_SPINCOUNT in the
    environment the workers inherit. Without `--poll`, libgomp's own default."""
    if poll is not None:
        os.environ["GOMP_SPINCOUNT"] = str(_OPENMP_DEFAULT_SPIN * max(poll, 0) // 50)


def _ignore_event(event: Event) -> None:
    pass


def _ignore_exit(code: int) -> None:
    pass


def _gone(query: int) -> SlotAnswer:
    return SlotAnswer(query, 503, ApiError(503, "the model's worker has gone").json())


class WorkerProcess:
    """A model worker seen from the router: its process, its pipe, and how it ends."""

    def __init__(self, cores: CoreTable) -> None:
        self.model_id = "(spare)"
        self._on_event: Callable[[Event], None] = _ignore_event
        self._on_exit: Callable[[int], None] = _ignore_exit
        self._commands = CommandCodec()
        self._events = EventCodec()
        self._loop = asyncio.get_running_loop()
        self.conn, child_conn = _SPAWN.Pipe(duplex=True)
        self.heartbeat = _SPAWN.Value("d", time.monotonic(), lock=False)
        self._cores = cores
        self.cell = cores.take_cell()
        self.counters = EngineCounters()
        self.process = _SPAWN.Process(
            target=model_worker.run,
            args=(child_conn, self.heartbeat, cores.cells, self.cell, self.counters.cells),
            name="llama-router-model",
        )
        self.process.start()
        child_conn.close()
        self.pid: int = self.process.pid or 0
        self.exit_code: int | None = None
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._released: asyncio.Future[None] | None = None
        self._answers: dict[int, asyncio.Future[SlotAnswer]] = {}
        self._queries = itertools.count(1)
        read_when_ready(self._loop, self.conn, self._read_events)
        self._loop.add_reader(self.process.sentinel, self._reap)

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def silent_for(self, now: float) -> float:
        """Seconds since the worker last showed it is not stuck."""
        return now - float(self.heartbeat.value)

    def load(
        self,
        settings: ModelSettings,
        on_event: Callable[[Event], None],
        on_exit: Callable[[int], None],
    ) -> bool:
        """Make this (spare) worker load a model; its reports go to the given callbacks."""
        self.model_id = settings.model_id
        self.counters.clear()  # a spare's figures were its last model's
        self._on_event = on_event
        self._on_exit = on_exit
        return self.send(Load(settings))

    def send(self, command: Command) -> bool:
        """Send a command; False when the worker can no longer hear it."""
        if not self.alive:
            return False
        try:
            self.conn.send_bytes(self._commands.encode(command))
        except (BrokenPipeError, ConnectionResetError, OSError):
            return False
        return True

    def _read_events(self) -> None:
        try:
            while self.conn.poll():
                event = self._events.decode(self.conn.recv_bytes())
                if isinstance(event, Released):
                    if self._released is not None and not self._released.done():
                        self._released.set_result(None)
                    continue
                if isinstance(event, SlotAnswer):
                    answer = self._answers.pop(event.query, None)
                    if answer is not None and not answer.done():
                        answer.set_result(event)
                    continue
                self._on_event(event)
        except (EOFError, OSError):
            self._loop.remove_reader(self.conn.fileno())

    async def slot_action(self, action: str, slot: int = 0, path: str = "") -> SlotAnswer:
        """Ask the worker about its slots, or act on one; a 503 answer if it goes away."""
        query = next(self._queries)
        answer: asyncio.Future[SlotAnswer] = self._loop.create_future()
        self._answers[query] = answer
        if not self.send(SlotAction(query, action, slot, path)):
            self._answers.pop(query, None)
            return _gone(query)
        try:
            return await answer
        finally:
            self._answers.pop(query, None)

    def _reap(self) -> None:
        self._loop.remove_reader(self.process.sentinel)
        if not self.conn.closed:
            self._read_events()  # whatever the worker said before it went
            self._loop.remove_reader(self.conn.fileno())
            self.conn.close()
        self.process.join(timeout=1)
        code = self.process.exitcode
        self.exit_code = code if code is not None else -1
        self._cores.give_back(self.cell)
        log.info("worker %s (pid %d) exited with %s", self.model_id, self.pid, self.exit_code)
        self._exited.set_result(self.exit_code)
        for query, answer in self._answers.items():
            if not answer.done():
                answer.set_result(_gone(query))
        self._on_exit(self.exit_code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def retire(self, timeout: float) -> bool:
        """Free the model but keep the process: True if the worker did so within `timeout`;
        otherwise it is ended by the escalation ladder and this answers False."""
        self._released = self._loop.create_future()
        if self.send(Exit(recycle=True)):
            exited = asyncio.ensure_future(self.wait())
            either: set[asyncio.Future[Any]] = {self._released, exited}
            await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            if self._released.done():
                return True
            if not self.alive:
                return False
            log.warning("worker %s did not unload within %.1fs; ending it", self.model_id, timeout)
        await self._escalate()
        return False

    def unbind(self) -> None:
        self.model_id = "(spare)"
        self._on_event = _ignore_event
        self._on_exit = _ignore_exit

    async def stop(self, exit_command: Command, timeout: float) -> int:
        """Escalate: ask over the pipe, wait `timeout`, SIGTERM the group, then SIGKILL the tree."""
        if self.send(exit_command):
            try:
                return await asyncio.wait_for(self.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "worker %s did not exit within %.1fs; ending it", self.model_id, timeout
                )
        return await self._escalate()

    async def _escalate(self) -> int:
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), _TERM_GRACE)
            except TimeoutError:
                log.warning("worker %s ignored SIGTERM; killing its process tree", self.model_id)
        if self.alive:
            self.kill()
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the worker and every process it started."""
        try:
            tree = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        self._signal_group(signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def _signal_group(self, sig: signal.Signals) -> None:
        signal_group(self.pid, sig)

    def resident_bytes(self) -> int | None:
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None


class SpareWorkers:
    """Keeps one worker started and imported ahead of need, so a cold load pays only for
    reading the model, not for starting Python and importing llama.cpp."""

    def __init__(self, cores: CoreTable) -> None:
        self._cores = cores
        self._spare: WorkerProcess | None = None
        self._closed = False
        self._stopping: set[asyncio.Task[int]] = set()

    def take(self) -> WorkerProcess:
        spare = self._spare
        if spare is None or not spare.alive:
            spare = WorkerProcess(self._cores)
        self._spare = None
        self._loop_later(self._refill)
        return spare

    def _refill(self) -> None:
        if not self._closed and (self._spare is None or not self._spare.alive):
            self._spare = WorkerProcess(self._cores)

    @staticmethod
    def _loop_later(callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(0.05, callback)

    def start(self) -> None:
        self._refill()

    def offer(self, worker: WorkerProcess) -> None:
        """A worker that freed its model: keep it as the spare, or let it go."""
        if not self._closed and (self._spare is None or not self._spare.alive):
            self._spare = worker
        else:
            task = asyncio.get_running_loop().create_task(worker.stop(Exit(), timeout=2.0))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def stop(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.stop(Exit(), timeout=2.0)
        await asyncio.gather(*self._stopping, return_exceptions=True)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a worker's process group (it and its children), or just it if it has none."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
