"""Wake-up notes from a ring's writer straight to the HTTP processes that follow the ring.

Each HTTP process listens on an abstract UNIX socket named after the router and its own number;
a ring's header says which processes follow it (`Ring.follow`). The writer (a model worker)
sends those processes the ring's key, eight bytes, when bytes or the end arrive. So a token's
wake-up goes from the worker to the reader and never through the supervisor. A stream socket
(not datagrams, whose queue Linux caps at a handful) holds thousands of notes; a note that
cannot be sent is dropped, and the reader's bounded wait covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger("llama-router")

_NOTE = struct.Struct("=Q")
_SEND_TIMEOUT = 1.0


def address(router_pid: int, process: int) -> bytes:
    """HTTP process `process` of the router `router_pid`; abstract, so nothing is left on disk."""
    return b"\0llama-router-notes-%d-%d" % (router_pid, process)


class NoteSender:
    """A writer's connections to the HTTP processes, opened on first use and again after a
    process was replaced. Safe to use from several threads."""

    def __init__(self, router_pid: int, timeout: float = _SEND_TIMEOUT) -> None:
        """`timeout` 0: never block (an event loop's sender); a reader that fell that far
        behind loses its connection and is sent the next note on a new one."""
        self._router_pid = router_pid
        self._timeout = timeout
        self._sockets: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def send(self, processes: list[int], key: int) -> None:
        note = _NOTE.pack(key)
        with self._lock:
            for process in processes:
                self._send_one(process, note)

    def _send_one(self, process: int, note: bytes) -> None:
        sock = self._sockets.get(process)
        if sock is None:
            sock = self._connect(process)
            if sock is None:
                return
        try:
            sock.sendall(note)
        except OSError:  # the process is gone (or stuck): a new one listens under the same name
            sock.close()
            del self._sockets[process]

    def _connect(self, process: int) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(address(self._router_pid, process))
        except OSError:
            sock.close()
            return None
        self._sockets[process] = sock
        return sock

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()


class NoteListener:
    """An HTTP process's end: accepts writers and hands every note's key to `wake`."""

    def __init__(self, router_pid: int, process: int, wake: Callable[[int], None]) -> None:
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(address(router_pid, process))
        self._server.listen(256)
        self._server.setblocking(False)
        self._readers: dict[socket.socket, bytes] = {}
        self._loop.add_reader(self._server.fileno(), self._accept)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                sock, _ = self._server.accept()
                sock.setblocking(False)
                self._readers[sock] = b""
                self._loop.add_reader(sock.fileno(), self._read, sock)

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        data = self._readers[sock] + data
        whole = len(data) - len(data) % _NOTE.size
        self._readers[sock] = data[whole:]
        for key in {key for (key,) in _NOTE.iter_unpack(data[:whole])}:
            self._wake(key)

    def _drop(self, sock: socket.socket) -> None:
        self._loop.remove_reader(sock.fileno())
        self._readers.pop(sock, None)
        sock.close()

    def close(self) -> None:
        for sock in list(self._readers):
            self._drop(sock)
        self._loop.remove_reader(self._server.fileno())
        self._server.close()
