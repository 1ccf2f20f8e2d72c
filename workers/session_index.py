"""The conversation-session index in shared memory: which ring holds which conversation.

The router writes it; any process on the machine can read it to find a session by id and
follow its ring. Each slot is guarded by a sequence word (odd while the writer changes it), so
a reader either sees a whole slot or tries again.
"""

from __future__ import annotations

import contextlib
import enum
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory

from workers.ring import Ring, RingState, attach_segment, segment_name

MAGIC = 0x4C4C53455353494F  # "LLSESSIO"
HEADER_BYTES = 64
SLOT_BYTES = 1024
MAX_ID_BYTES = 768
MAX_RING_NAME = 96
_SLOT_HEAD = struct.Struct("=QQQQQQ")  # seq, state, started_ns, completed_ns, id_len, ring_len
_RETRIES = 1000
_ID_LEN_WORD = 4  # id_len's place among a slot's head words


class SessionState(enum.IntEnum):
    EMPTY = 0
    PENDING = 1  # waiting for its model to load
    LIVE = 2
    DONE = 3


@dataclass(frozen=True)
class SessionEntry:
    slot: int
    conversation_id: str
    ring: str
    state: SessionState
    started_ns: int
    completed_ns: int


def index_name(owner_pid: int) -> str:
    """Serial 0 of the owner's segments: the index lives beside the rings and is swept with them."""
    return segment_name(owner_pid, 0)


class SessionIndex:
    def __init__(self, segment: shared_memory.SharedMemory, owner: bool) -> None:
        self._segment = segment
        self._owner = owner
        buf = segment.buf
        assert buf is not None
        self._buf = buf
        magic, slots = struct.unpack_from("=QQ", buf, 0)
        if magic != MAGIC:
            raise ValueError(f"{segment.name} is not a llama-router session index")
        self.slots = slots
        self._hints: dict[str, int] = {}  # where a reader found a session last

    @classmethod
    def create(cls, name: str, slots: int) -> SessionIndex:
        segment = shared_memory.SharedMemory(
            name=name, create=True, size=HEADER_BYTES + slots * SLOT_BYTES
        )
        assert segment.buf is not None
        struct.pack_into("=QQ", segment.buf, 0, MAGIC, slots)
        return cls(segment, owner=True)

    @classmethod
    def attach(cls, name: str) -> SessionIndex:
        return cls(attach_segment(name), owner=False)

    def _offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * SLOT_BYTES

    # --- writer (the owner) ---------------------------------------------------------------------

    def write(self, slot: int, entry: SessionEntry) -> None:
        conversation = entry.conversation_id.encode()
        ring = entry.ring.encode()
        if len(conversation) > MAX_ID_BYTES or len(ring) > MAX_RING_NAME:
            raise ValueError("conversation id or ring name too long for the index")
        at = self._offset(slot)
        seq = struct.unpack_from("=Q", self._buf, at)[0]
        struct.pack_into("=Q", self._buf, at, seq + 1)  # odd: being written
        head = (
            seq + 1,
            entry.state,
            entry.started_ns,
            entry.completed_ns,
            len(conversation),
            len(ring),
        )
        _SLOT_HEAD.pack_into(self._buf, at, *head)
        body = at + _SLOT_HEAD.size
        self._buf[body : body + len(conversation)] = conversation
        self._buf[body + MAX_ID_BYTES : body + MAX_ID_BYTES + len(ring)] = ring
        struct.pack_into("=Q", self._buf, at, seq + 2)

    def clear(self, slot: int) -> None:
        self.write(slot, SessionEntry(slot, "", "", SessionState.EMPTY, 0, 0))

    # --- readers (any process) ------------------------------------------------------------------

    def read(self, slot: int) -> SessionEntry | None:
        at = self._offset(slot)
        for _ in range(_RETRIES):
            seq, state, started, completed, id_len, ring_len = _SLOT_HEAD.unpack_from(self._buf, at)
            if seq % 2:
                continue
            if state == SessionState.EMPTY:
                return None
            body = at + _SLOT_HEAD.size
            conversation = bytes(self._buf[body : body + id_len])
            ring = bytes(self._buf[body + MAX_ID_BYTES : body + MAX_ID_BYTES + ring_len])
            if struct.unpack_from("=Q", self._buf, at)[0] != seq:
                continue
            return SessionEntry(
                slot, conversation.decode(), ring.decode(), SessionState(state), started, completed
            )
        return None

    def entries(self) -> list[SessionEntry]:
        return [entry for slot in range(self.slots) if (entry := self.read(slot)) is not None]

    def find(self, conversation_id: str) -> SessionEntry | None:
        """Every HTTP process looks a session up here on each replay: the slot it was found
        in last time is tried first; otherwise the slots' id lengths are read in one strided
        pass, and only slots whose id is as long are read whole."""
        hinted = self._hints.get(conversation_id)
        if hinted is not None:
            entry = self.read(hinted)
            if entry is not None and entry.conversation_id == conversation_id:
                return entry
            del self._hints[conversation_id]
        for slot in self._slots_with_id_length(len(conversation_id.encode())):
            entry = self.read(slot)
            if entry is not None and entry.conversation_id == conversation_id:
                if len(self._hints) >= self.slots:
                    self._hints.clear()
                self._hints[conversation_id] = slot
                return entry
        return None

    def _slots_with_id_length(self, length: int) -> Iterator[int]:
        words = self._buf[HEADER_BYTES : HEADER_BYTES + self.slots * SLOT_BYTES].cast("Q")
        try:
            lengths = words[_ID_LEN_WORD :: SLOT_BYTES // 8].tolist()
        finally:
            words.release()
        slot = -1
        with contextlib.suppress(ValueError):
            while True:
                slot = lengths.index(length, slot + 1)
                yield slot

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        self._buf.release()
        self._segment.close()

    def unlink(self) -> None:
        if not self._owner:
            raise PermissionError("only the index's owner unlinks it")
        with contextlib.suppress(FileNotFoundError):
            self._segment.unlink()


def follow_session(
    owner_pid: int, conversation_id: str, offset: int = 0, poll: float = 0.005
) -> Iterator[bytes]:
    """From any process: the session's bytes from `offset` until it ends (raises KeyError if
    it is not listed, OffsetLost if `offset` already dropped off its ring). Unlinks nothing."""
    index = SessionIndex.attach(index_name(owner_pid))
    try:
        entry = index.find(conversation_id)
        if entry is None:
            raise KeyError(conversation_id)
        ring = Ring.attach(entry.ring)
    finally:
        index.close()
    try:
        while True:
            data = ring.read(offset)
            if data:
                offset += len(data)
                yield data
            elif ring.state is not RingState.RUNNING:
                if ring.write_pos == offset:
                    return
            else:
                time.sleep(poll)
    finally:
        ring.close()
