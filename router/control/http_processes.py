"""The HTTP processes beside the main one: started with the router, each replaced as soon as
it dies, stopped with it. Each talks to the supervisor over its own pipe (router/control/
port.py).

Each has its own listening socket on every TCP address (SO_REUSEPORT), so that the kernel
spreads new connections evenly: on one shared socket, the process that wakes first accepts a
whole burst of them. The main process keeps those sockets open, so connections that arrive
while a process is being replaced wait in its backlog for the new one. A UNIX socket is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from router.config import RouterConfig
from router.control.port import ControlPort
from router.http import process as http_process

log = logging.getLogger("llama-router")

_SPAWN = multiprocessing.get_context("spawn")
# Time for a stopping HTTP process to finish its responses (its streams end with the router's
# generations), beyond which it is killed.
STOP_SECONDS = 8.0
BACKLOG = 2048  # uvicorn's


class HttpProcesses:
    def __init__(
        self,
        config: RouterConfig,
        sockets: list[socket.socket],
        serve: Callable[[Connection, Callable[[], None]], ControlPort],
        on_gone: Callable[[int], None],
    ) -> None:
        self._config = config
        self._sockets = sockets
        self._serve = serve
        self._on_gone = on_gone
        self._running: dict[int, tuple[BaseProcess, ControlPort]] = {}
        self._listeners: dict[int, list[socket.socket]] = {}
        self._stopping = False

    @property
    def count(self) -> int:
        """HTTP processes alive, the main one included."""
        return 1 + len(self._running)

    def pids(self) -> list[int]:
        """The main process first, then the others by number."""
        return [os.getpid(), *(self._running[n][0].pid or 0 for n in sorted(self._running))]

    def start(self) -> None:
        if not self._sockets:
            return
        for process in range(1, self._config.http_workers):
            self._spawn(process)

    def _spawn(self, process: int) -> None:
        ours, theirs = _SPAWN.Pipe(duplex=True)
        child = _SPAWN.Process(
            target=http_process.run,
            args=(self._config, self._listening(process), process, theirs),
            name=f"llama-router-http-{process}",
        )
        child.start()
        theirs.close()
        self._running[process] = (child, self._serve(ours, lambda: _kill(child)))
        asyncio.get_running_loop().add_reader(child.sentinel, self._reap, process)
        log.info("HTTP process %d started (pid %s)", process, child.pid)

    def _listening(self, process: int) -> list[socket.socket]:
        if process not in self._listeners:
            self._listeners[process] = [_own_copy(sock) for sock in self._sockets]
        return self._listeners[process]

    def _reap(self, process: int) -> None:
        child, port = self._running.pop(process)
        asyncio.get_running_loop().remove_reader(child.sentinel)
        child.join(timeout=1)
        port.close()
        if child.pid is not None:
            self._on_gone(child.pid)
        if self._stopping:
            return
        log.error(
            "HTTP process %d (pid %s) exited with %s: replacing it",
            process,
            child.pid,
            child.exitcode,
        )
        self._spawn(process)

    def stop_soon(self) -> None:
        """Ask every HTTP process to finish; none is replaced from now on."""
        self._stopping = True
        for child, _ in self._running.values():
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def close_sockets(self) -> None:
        for listeners in self._listeners.values():
            for sock in listeners:
                if sock not in self._sockets:
                    sock.close()
        self._listeners.clear()

    async def stop(self) -> None:
        self.stop_soon()
        children = [child for child, _ in self._running.values()]
        loop = asyncio.get_running_loop()
        waits = [loop.run_in_executor(None, child.join, STOP_SECONDS) for child in children]
        await asyncio.gather(*waits)
        for child in children:
            if child.is_alive():
                log.warning("HTTP process pid %s did not stop: killing it", child.pid)
                child.kill()
                child.join(timeout=1)
        self.close_sockets()


def _kill(child: BaseProcess) -> None:
    if child.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)


def _own_copy(sock: socket.socket) -> socket.socket:
    """A listening socket of its own on the same TCP address; a UNIX socket is shared."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    copy = socket.socket(sock.family, sock.type, sock.proto)
    copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        copy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    copy.bind(sock.getsockname())
    copy.listen(BACKLOG)
    return copy
