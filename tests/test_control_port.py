"""The supervisor's end of an HTTP process's pipe, without a router."""

from __future__ import annotations

import multiprocessing
import threading
import time

from router.control.port import Outbox


def test_a_process_that_stops_reading_never_blocks_the_supervisor() -> None:
    ours, theirs = multiprocessing.Pipe()  # nobody reads `theirs`
    stuck = threading.Event()
    outbox = Outbox(ours, stuck.set, limit=4 << 20)
    started = time.monotonic()
    for _ in range(100):  # 6.4 MB, far more than the pipe holds
        outbox.put(b"x" * 65536)
    assert time.monotonic() - started < 1.0  # every put returned at once
    assert stuck.is_set()  # and the process that fell behind is given up on
    outbox.close()
    theirs.close()
    ours.close()


def test_messages_go_out_whole_and_in_order() -> None:
    ours, theirs = multiprocessing.Pipe()
    outbox = Outbox(ours, lambda: None)
    sent = [bytes([n]) * (n * 1000 + 1) for n in range(50)]
    for message in sent:
        outbox.put(message)
    assert [theirs.recv_bytes() for _ in sent] == sent
    outbox.close()
    theirs.close()
    ours.close()
