"""Requests sent straight from an HTTP process to a model worker, past the supervisor.

A relayed request would cost two process wakes more than one served in the main process: into
the supervisor, which leases the model, and on to the worker. So while a model is loaded and
awake, its worker also listens on an abstract UNIX datagram socket, whose address the
supervisor hands to every HTTP process with the model's names; a request for it goes there as
one datagram (an `Infer`). The supervisor hears of it a moment later if it still runs, to count
the model busy and to report a worker that dies first; of a shorter one, from the worker.

The worker stays the arbiter: once it reads a command that stops or sleeps the model, it shuts
its socket (a sender then fails at once and goes through the supervisor) and turns away every
datagram still queued, marking its ring `REFUSED`, so that its HTTP process sends it again
through the supervisor. A datagram that cannot be sent (the queue is full, the body too large
for one) goes through the supervisor too.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Callable

import msgspec

from workers.protocol import Infer

_serials = itertools.count(1)
_CREDENTIALS = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_ANCILLARY_BYTES = socket.CMSG_SPACE(_CREDENTIALS.size)
# The largest request sent as a datagram (Linux's default send buffer takes about 208 KiB); a
# larger one goes through the supervisor.
MAX_DATAGRAM = 192 << 10


class DirectInbox:
    """A worker's socket for direct requests, open while its model is loaded and awake."""

    def __init__(self) -> None:
        self.address = f"\0llama-router-direct-{os.getpid()}-{next(_serials)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.setblocking(False)
        # An abstract socket has no file mode: the kernel's word on each sender's user stands
        # in for one, so that only the router's own user (who owns its rings) is served.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._uid = os.getuid()
        self._decode = msgspec.msgpack.Decoder(Infer).decode
        self._buffer = bytearray(MAX_DATAGRAM)

    @property
    def socket(self) -> socket.socket:
        """To wait on."""
        return self._socket

    def receive(self) -> list[Infer]:
        """The requests queued now."""
        requests: list[Infer] = []
        while True:
            try:
                size, ancillary, _, _ = self._socket.recvmsg_into([self._buffer], _ANCILLARY_BYTES)
            except BlockingIOError:
                return requests
            if self._sender_uid(ancillary) != self._uid:
                continue  # another user's: nobody of ours waits for it
            try:
                requests.append(self._decode(memoryview(self._buffer)[:size]))
            except msgspec.DecodeError:
                continue

    @staticmethod
    def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                return _CREDENTIALS.unpack(data[: _CREDENTIALS.size])[1]
        return None

    def close(self, refuse: Callable[[Infer], None]) -> None:
        """Take no more: later senders fail, and the requests already queued are refused."""
        self._socket.shutdown(socket.SHUT_RD)
        for request in self.receive():
            refuse(request)
        self._socket.close()


class DirectSender:
    """An HTTP process's end: one unbound socket that sends to any worker without blocking."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._encode = msgspec.msgpack.Encoder().encode

    def send(self, address: str, request: Infer) -> bool:
        """Whether the worker at `address` has the request queued; if not, nobody will run it."""
        datagram = self._encode(request)
        if len(datagram) > MAX_DATAGRAM:
            return False
        try:
            self._socket.sendto(datagram, address)
        except OSError:  # shut or gone, its queue full, or the request too large for a datagram
            return False
        return True

    def close(self) -> None:
        self._socket.close()
