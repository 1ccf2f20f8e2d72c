"""A worker's direct socket (workers/direct.py): what it takes, what it turns away."""

from __future__ import annotations

import os
import socket

import pytest

from workers.direct import MAX_DATAGRAM, DirectInbox, DirectSender
from workers.protocol import Infer

NOBODY = 65534


def infer(request_id: int) -> Infer:
    return Infer(request_id, "/v1/completions", b'{"prompt":"x"}', f"ring-{request_id}")


def test_queued_requests_are_refused_when_it_closes_and_later_ones_are_not_sent() -> None:
    inbox, sender = DirectInbox(), DirectSender()
    assert sender.send(inbox.address, infer(1))
    assert inbox.receive() == [infer(1)]
    assert sender.send(inbox.address, infer(2)) and sender.send(inbox.address, infer(3))
    refused: list[Infer] = []
    inbox.close(refused.append)
    assert refused == [infer(2), infer(3)]
    assert not sender.send(inbox.address, infer(4))  # the caller goes through the supervisor
    sender.close()


def test_a_full_queue_or_a_body_too_large_for_a_datagram_is_not_sent() -> None:
    inbox, sender = DirectInbox(), DirectSender()
    largest = Infer(1, "/v1/completions", b"x" * (MAX_DATAGRAM - 100), "ring")
    assert sender.send(inbox.address, largest)
    assert inbox.receive() == [largest]
    assert not sender.send(inbox.address, Infer(2, "/v1/completions", b"x" * MAX_DATAGRAM, "ring"))
    sent = 0
    while sender.send(inbox.address, infer(sent)):
        sent += 1
    assert 0 < sent < 1000  # Linux queues only a handful of datagrams per socket
    assert inbox.receive() == [infer(n) for n in range(sent)]
    inbox.close(lambda request: None)
    sender.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root, to send as another user")
def test_datagrams_of_another_user_or_not_a_request_are_dropped() -> None:
    inbox, sender = DirectInbox(), DirectSender()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child only sends, then exits)
        try:
            os.setuid(NOBODY)
            DirectSender().send(inbox.address, infer(666))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        raw.sendto(b"not msgpack", inbox.address)
    assert sender.send(inbox.address, infer(1))
    assert inbox.receive() == [infer(1)]
    inbox.close(lambda request: None)
    sender.close()
