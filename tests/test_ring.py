"""The shared-memory ring on its own: offsets, wraparound, lapped readers, other processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from workers.ring import Media, OffsetLost, Ring, RingState, owner_of, segment_name

_serial = iter(range(1, 1_000_000))


@pytest.fixture
def make_ring():
    rings: list[Ring] = []

    def make(capacity: int, backpressure: bool = False) -> Ring:
        ring = Ring.create(
            segment_name(os.getpid(), 900_000 + next(_serial)), capacity, backpressure
        )
        rings.append(ring)
        return ring

    yield make
    for ring in rings:
        ring.close()
        ring.unlink()


def test_bytes_keep_absolute_offsets_across_wraparound(make_ring) -> None:
    ring = make_ring(16)
    ring.write(b"0123456789")
    assert ring.read(0) == b"0123456789"
    ring.write(b"abcdef")  # exactly fills the capacity: end lands on a multiple of it
    assert ring.write_pos == 16
    assert ring.read(0) == b"0123456789abcdef"
    ring.write(b"XYZ")  # straddles the end of the buffer
    assert ring.start_pos == 3
    assert ring.read(3) == b"3456789abcdefXYZ"
    assert ring.read(14, limit=4) == b"efXY"
    with pytest.raises(OffsetLost):
        ring.read(2)
    assert ring.read(19) == b""


def test_a_write_larger_than_the_ring_keeps_the_newest_bytes(make_ring) -> None:
    ring = make_ring(8)
    ring.write(bytes(range(20)))
    assert ring.write_pos == 20
    assert ring.read(12) == bytes(range(12, 20))


def test_head_state_and_cancel_flag(make_ring) -> None:
    ring = make_ring(64)
    assert ring.state is RingState.RUNNING and not ring.cancelled
    ring.begin(201, Media.EVENT_STREAM)
    ring.cancel()
    ring.finish()
    reader = Ring.attach(ring.name)
    assert (reader.status, reader.media, reader.state) == (201, Media.EVENT_STREAM, RingState.DONE)
    assert reader.cancelled and reader.ended_ns >= reader.started_ns > 0
    with pytest.raises(PermissionError):
        reader.unlink()
    reader.close()


def test_backpressure_waits_for_the_reader(make_ring) -> None:
    ring = make_ring(8, backpressure=True)
    done = threading.Event()

    def writer() -> None:
        ring.write(bytes(range(24)))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    received = b""
    while len(received) < 24:
        data = ring.read(len(received))
        received += data
        ring.ack(len(received))
        if not data:
            time.sleep(0.001)
    thread.join(5)
    assert done.is_set()
    assert received == bytes(range(24))


def _patterned_writer(name: str, total: int) -> None:
    ring = Ring.attach(name)
    chunk = bytes(i % 251 for i in range(997))
    written = 0
    while written < total:
        ring.write(chunk)
        written += len(chunk)
        if written < 997 * 200:
            time.sleep(0.0005)  # a gentle start the reader keeps up with, then full speed
    ring.finish()
    ring.close()


def test_slow_readers_never_see_torn_bytes(make_ring) -> None:
    """A fast writer in another process laps slow readers: they get OffsetLost, never bad bytes."""
    ring = make_ring(4096)
    total = 997 * 3000
    writer = multiprocessing.get_context("spawn").Process(
        target=_patterned_writer, args=(ring.name, total)
    )
    writer.start()
    lost = verified = reads = 0
    offset = 0
    while ring.state is RingState.RUNNING or offset < ring.write_pos:
        try:
            data = ring.read(offset, limit=1500)
        except OffsetLost:
            lost += 1
            offset = ring.write_pos  # a lapped reader restarts at the head
            continue
        for index, byte in enumerate(data):
            assert byte == ((offset + index) % 997) % 251
        verified += len(data)
        offset += len(data)
        reads += 1 if data else 0
        if data and reads % 50 == 0:  # now and then stall until the writer is a whole ring ahead
            while ring.state is RingState.RUNNING and ring.write_pos - offset <= ring.capacity:
                time.sleep(0.0001)
    writer.join(10)
    assert writer.exitcode == 0
    assert verified > 0
    assert lost > 0, "the stress test never lapped its reader; make the ring smaller"


def _follow_in_child(name: str, queue: multiprocessing.Queue) -> None:
    ring = Ring.attach(name)
    received = b""
    while ring.state is RingState.RUNNING or len(received) < ring.write_pos:
        data = ring.read(len(received))
        received += data
        if not data:
            time.sleep(0.001)
    ring.close()
    queue.put(received)


def test_a_separate_process_follows_a_live_ring_and_unlinks_nothing(make_ring) -> None:
    ring = make_ring(1 << 16)
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    follower = context.Process(target=_follow_in_child, args=(ring.name, queue))
    follower.start()
    expected = b""
    for index in range(200):
        event = f"data: {index}\n\n".encode()
        ring.write(event)
        expected += event
        time.sleep(0.001)
    ring.finish()
    assert queue.get(timeout=20) == expected
    follower.join(10)
    assert os.path.exists(f"/dev/shm/{ring.name}")  # the follower did not unlink it


def test_segment_names_identify_their_owner() -> None:
    assert owner_of(segment_name(1234, 5)) == 1234
    assert owner_of("psm_abcdef") is None
    assert owner_of("llama_router_x_1") is None
