"""A byte ring in shared memory: one writer, any number of readers, in any process.

Bytes live at absolute offsets from 0; the ring keeps the newest `capacity` of them. A reader
never gets torn bytes: the writer publishes how far it is about to write (`reserve`) before it
copies, and a reader checks that mark after its copy; if the copy may have been overwritten it
reports `OffsetLost` instead. The header words are 8-byte aligned single stores (memoryview
casts, not byte loops), ordered as x86-64 and other TSO machines keep them.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing import resource_tracker, shared_memory

import psutil

from workers.errors import ApiError

MAGIC = 0x4C4C52494E4732  # "LLRING2"
# HTTP processes that may follow one ring; each has one word of the header (see `follow`).
MAX_READER_PROCESSES = 64
_READERS = 16
HEADER_BYTES = (_READERS + MAX_READER_PROCESSES) * 8

_MAGIC, _CAPACITY, _WRITE, _RESERVE, _STATE, _CANCEL, _ACK, _FLAGS = range(8)
_STATUS, _MEDIA, _STARTED_NS, _ENDED_NS, _TAKEN, _FIRST_BYTE_NS, _KEY, _USES = range(8, 16)

# what one request leaves in the header of a pooled ring
_PER_REQUEST = (_WRITE, _RESERVE, _STATE, _CANCEL, _ACK, _MEDIA, _ENDED_NS, _TAKEN, _FIRST_BYTE_NS)

_FLAG_BACKPRESSURE = 1
_BACKPRESSURE_SLEEP = 0.0005

SEGMENT_PREFIX = "llama_router_"


class RingState(enum.IntEnum):
    RUNNING = 0
    DONE = 1
    FAILED = 2
    REFUSED = 3  # a worker turned the request away unread (workers/direct.py): send it again


class Media(enum.IntEnum):
    """What the response bytes are, decided by the writer before its first byte."""

    UNKNOWN = 0
    JSON = 1
    EVENT_STREAM = 2


class OffsetLost(Exception):
    """The requested bytes have already dropped off the front of the ring."""


class Cancelled(Exception):
    """The ring was cancelled while the writer waited for room."""


def segment_name(owner_pid: int, serial: int) -> str:
    return f"{SEGMENT_PREFIX}{owner_pid}_{serial}"


def ring_key(name: str) -> int:
    """A number naming a ring of ours among every ring alive: its owner's pid and serial."""
    pid, _, serial = name[len(SEGMENT_PREFIX) :].partition("_")
    return int(pid) << 32 | int(serial)


def owner_of(name: str) -> int | None:
    """The pid encoded in a segment name of ours, or None for anybody else's segment."""
    if not name.startswith(SEGMENT_PREFIX):
        return None
    pid, _, serial = name[len(SEGMENT_PREFIX) :].partition("_")
    return int(pid) if pid.isdigit() and serial.isdigit() else None


@contextmanager
def _untracked() -> Iterator[None]:
    # Before Python 3.13 every attach registers the segment with the resource tracker, which the
    # whole process tree shares; the owner's unlink would then be reported twice or undone.
    register = resource_tracker.register
    resource_tracker.register = lambda name, rtype: None
    try:
        yield
    finally:
        resource_tracker.register = register


def attach_segment(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    with _untracked():
        return shared_memory.SharedMemory(name=name)


class Ring:
    def __init__(self, segment: shared_memory.SharedMemory, owner: bool) -> None:
        self._segment = segment
        self._owner = owner
        buf = segment.buf
        assert buf is not None
        self._words = buf[:HEADER_BYTES].cast("Q")
        if self._words[_MAGIC] != MAGIC:
            self._words.release()
            raise ValueError(f"{segment.name} is not a llama-router ring")
        self.capacity = self._words[_CAPACITY]
        self._data = buf[HEADER_BYTES : HEADER_BYTES + self.capacity]

    @classmethod
    def create(cls, name: str, capacity: int, backpressure: bool = False) -> Ring:
        """Create and own a ring; only the owner unlinks it. Its key, the pid and serial of its
        name, is how a wake-up note names it (workers/notes.py)."""
        segment = shared_memory.SharedMemory(name=name, create=True, size=HEADER_BYTES + capacity)
        buf = segment.buf
        assert buf is not None
        words = buf[:HEADER_BYTES].cast("Q")
        words[_CAPACITY] = capacity
        words[_FLAGS] = _FLAG_BACKPRESSURE if backpressure else 0
        words[_STATUS] = 200
        words[_STARTED_NS] = time.time_ns()
        words[_KEY] = ring_key(name)
        words[_MAGIC] = MAGIC
        words.release()
        return cls(segment, owner=True)

    @classmethod
    def attach(cls, name: str) -> Ring:
        return cls(attach_segment(name), owner=False)

    @property
    def name(self) -> str:
        return self._segment.name

    # --- header -------------------------------------------------------------------------------

    @property
    def key(self) -> int:
        return self._words[_KEY]

    @property
    def uses(self) -> int:
        """How many requests a pooled ring has served before the one it serves now."""
        return self._words[_USES]

    @property
    def write_pos(self) -> int:
        return self._words[_WRITE]

    @property
    def start_pos(self) -> int:
        """The oldest offset still held."""
        return max(0, self._words[_WRITE] - self.capacity)

    @property
    def state(self) -> RingState:
        return RingState(self._words[_STATE])

    @property
    def cancelled(self) -> bool:
        return self._words[_CANCEL] != 0

    def cancel(self) -> None:
        self._words[_CANCEL] = 1

    @property
    def status(self) -> int:
        return self._words[_STATUS]

    @property
    def media(self) -> Media:
        return Media(self._words[_MEDIA])

    @property
    def started_ns(self) -> int:
        return self._words[_STARTED_NS]

    @property
    def ended_ns(self) -> int:
        return self._words[_ENDED_NS]

    @property
    def taken(self) -> bool:
        """Whether a worker has picked the request up (it may already be working on it)."""
        return self._words[_TAKEN] != 0

    def take(self) -> None:
        self._words[_TAKEN] = 1

    @property
    def first_byte_ns(self) -> int:
        """time.monotonic_ns() (the same clock in every process) when the response began."""
        return self._words[_FIRST_BYTE_NS]

    def begin(self, status: int, media: Media) -> None:
        """Set the response head; readers look at it once the first byte or the end is there."""
        self._words[_FIRST_BYTE_NS] = time.monotonic_ns()
        self._words[_STATUS] = status
        self._words[_MEDIA] = media

    def finish(self, state: RingState = RingState.DONE) -> None:
        self._words[_ENDED_NS] = time.time_ns()
        self._words[_STATE] = state

    def reset(self) -> None:
        """Make a finished ring ready for its next request (owner only, nobody else using it)."""
        for word in _PER_REQUEST:
            self._words[word] = 0
        self._words[_USES] += 1
        self._words[_STATUS] = 200
        self._words[_STARTED_NS] = time.time_ns()

    def follow(self, process: int, readers: int) -> None:
        """HTTP process number `process` now has `readers` readers of this ring waiting for its
        bytes: while it has any, the writer sends it a note when bytes or the end arrive. Each
        process writes only its own word, so no two processes race on one."""
        self._words[_READERS + process] = readers

    def reader_processes(self) -> list[int]:
        """The HTTP processes to notify of new bytes."""
        words = self._words[_READERS:].tolist()
        return [process for process, readers in enumerate(words) if readers]

    def ack(self, offset: int) -> None:
        """The primary reader has consumed everything before `offset` (used for backpressure)."""
        self._words[_ACK] = offset

    # --- data ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append `data`. With backpressure, wait for the primary reader instead of overwriting."""
        view = memoryview(data)
        backpressure = bool(self._words[_FLAGS] & _FLAG_BACKPRESSURE)
        while view:
            end = self._words[_WRITE]
            room = self.capacity - (end - self._words[_ACK]) if backpressure else self.capacity
            if room <= 0:
                if self._words[_CANCEL]:
                    raise Cancelled
                time.sleep(_BACKPRESSURE_SLEEP)
                continue
            chunk = view[: min(len(view), room)]
            self._words[_RESERVE] = end + len(chunk)
            self._copy_in(end % self.capacity, chunk)
            self._words[_WRITE] = end + len(chunk)
            view = view[len(chunk) :]

    def _copy_in(self, at: int, chunk: memoryview) -> None:
        first = min(len(chunk), self.capacity - at)
        self._data[at : at + first] = chunk[:first]
        if first < len(chunk):
            self._data[: len(chunk) - first] = chunk[first:]

    def read(self, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes from `offset` up to what is written (at most `limit`); b"" when none yet."""
        end = min(self._words[_WRITE], offset + limit)
        if offset >= end:
            return b""
        if offset < end - self.capacity:
            raise OffsetLost(offset)
        at = offset % self.capacity
        first = min(end - offset, self.capacity - at)
        data = bytes(self._data[at : at + first])
        if first < end - offset:
            data += bytes(self._data[: end - offset - first])
        if offset < self._words[_RESERVE] - self.capacity:
            raise OffsetLost(offset)
        return data

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        self._words.release()
        self._data.release()
        self._segment.close()

    def unlink(self) -> None:
        """Remove the segment's name; mapped readers keep their view until they close."""
        if not self._owner:
            raise PermissionError("only the ring's owner unlinks it")
        with suppress(FileNotFoundError):
            self._segment.unlink()


class AttachedRings:
    """A reader's or writer's mappings of rings, kept while the owner reuses them."""

    def __init__(self, keep: int = 256) -> None:
        self._keep = keep
        self._rings: OrderedDict[str, Ring] = OrderedDict()

    def get(self, name: str) -> Ring:
        ring = self._rings.pop(name, None)
        if ring is None:
            ring = Ring.attach(name)
            if len(self._rings) >= self._keep:
                self._rings.popitem(last=False)[1].close()
        self._rings[name] = ring
        return ring

    def forget(self, owner_pid: int) -> None:
        """Unmap the rings of a process that is gone: they will never be used again."""
        for name in [name for name in self._rings if owner_of(name) == owner_pid]:
            self._rings.pop(name).close()


def segments_of(owner_pid: int, shm_dir: str = "/dev/shm") -> list[str]:
    """The names of the ring segments `owner_pid` made."""
    try:
        return [name for name in os.listdir(shm_dir) if owner_of(name) == owner_pid]
    except FileNotFoundError:
        return []


def sweep_stale_segments(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink ring segments whose owning router is gone; other programs' segments are untouched."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        pid = owner_of(name)
        if pid is None or pid == os.getpid() or process_alive(pid):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (dead, its parent gone too, not yet reaped) does not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole SSE events in `data`, each with the blank line that ends it, and the rest:
    every byte kept, so that offsets counted over the events are the ring's."""
    events = []
    start = 0
    while (end := data.find(b"\n\n", start)) >= 0:
        events.append(data[start : end + 2])
        start = end + 2
    return events, data[start:]


def with_event_id(event: bytes, start: int) -> bytes:
    """Prefix `id: N` where N is the ring offset just past this very event."""
    digits = len(str(start + len(event)))
    while True:
        end = start + len(event) + len(b"id: \n") + digits
        if len(str(end)) == digits:
            return b"id: %d\n" % end + event
        digits = len(str(end))


def write_error(ring: Ring, error: ApiError, started: bool) -> None:
    """A failure, as a last event once the stream has begun, else as the JSON answer."""
    if started:
        ring.write(error.sse())
    else:
        ring.begin(error.status, Media.JSON)
        ring.write(error.json())
