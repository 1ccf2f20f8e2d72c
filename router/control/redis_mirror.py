"""The main process's copy of its sessions into Redis, for the other replicas (`--sessions-redis`).

The ring stays the session: local readers never touch Redis. The mirror follows each session's
ring as one more reader and one writer task sends what is new, event by event, in one pipeline
per pass. The ring is also the mirror's buffer: while Redis is down nothing is read, the
generation goes on, and once Redis is back the mirror takes up where Redis's copy stops (a
Redis that lost its data gets everything the ring still holds). Only bytes the ring dropped
meanwhile are missing there, and a replay from them answers "offset lost", as the ring would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from router import session_store as store
from router.http.exchanges import RingWatch
from workers.ring import OffsetLost, Ring, RingState, split_events
from workers.session_index import SessionState

if TYPE_CHECKING:
    from router.control.sessions import Session

log = logging.getLogger("llama-router")

# What one pass sends of one session at most; more waits for the next pass.
PASS_BYTES = 1 << 20
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0)
# Stops asked for sessions Redis could not hear of yet; older ones expire with their TTL.
MAX_DROPS = 4096
CLOSE_SECONDS = 1.0

# Whose the session record is: the first write of a session takes it over from an earlier
# session of the same id, and tells that session's replica to stop it (a new request with the
# id replaces the old one, on any replica); later writes only touch their own (a replaced
# session's late writes go nowhere).
# KEYS: meta; ARGV: gen, takeover, ttl ms, conversation id, stop channel prefix, field, value, ...
_PUT_META = """
local current = redis.call('HGET', KEYS[1], 'gen')
if ARGV[2] == '1' or not current or current == ARGV[1] then
  if current and current ~= ARGV[1] then
    local owner = redis.call('HGET', KEYS[1], 'owner')
    if owner then
      local stop = cjson.encode({conversation_id = ARGV[4], gen = current})
      redis.call('PUBLISH', ARGV[5] .. owner, stop)
    end
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[1], 'gen', ARGV[1], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""


@dataclass(eq=False)
class Track:
    """One session as the mirror sees it."""

    session: Session
    gen: str
    sent: int = 0  # the ring offset up to which Redis holds the bytes
    opened: bool = False  # its stream exists in Redis
    claimed: bool = False  # its record has been taken over from any earlier session
    meta_sent: bool = False
    ended: bool = False  # its end entry is in Redis
    retired: bool = False  # dropped while a pass was under way: its ring is closed
    follower: asyncio.Task[None] | None = None

    @property
    def conversation_id(self) -> str:
        return self.session.conversation_id

    def record(self) -> list[str]:
        session = self.session
        done, completed_ns = session.ended()
        if done:
            state = store.StoredState.DONE
        elif session.state is SessionState.PENDING:
            state = store.StoredState.PENDING
        else:
            state = store.StoredState.LIVE
        return [
            "state", state.value,
            "started_ns", str(session.started_ns),
            "completed_ns", str(completed_ns),
            "capacity", str(session.ring.capacity),
        ]  # fmt: skip


class RedisMirror:
    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._client = store.connect(url)
        self._put_meta = self._client.register_script(_PUT_META)
        self._drop = self._client.register_script(store.DROP)
        self._serials = itertools.count(1)
        self._tracks: dict[str, Track] = {}
        self._dirty: dict[Track, None] = {}  # ordered: sessions are written as they came
        self._drops: deque[tuple[str, str]] = deque(maxlen=MAX_DROPS)
        self._kick = asyncio.Event()
        self._resync = False
        self._connected = True
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: RingWatch | None = None
        self._stop: Callable[[str], None] = lambda conversation_id: None

    def start(self, watch: RingWatch, stop: Callable[[str], None]) -> None:
        """`stop(conversation_id)` is how a DELETE made on another replica stops a session."""
        self._watch, self._stop = watch, stop
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_forever()),
            loop.create_task(self._heartbeat_forever()),
            loop.create_task(self._listen_forever()),
        ]

    # --- the sessions' hooks --------------------------------------------------------------------

    def begin(self, session: Session) -> None:
        track = Track(session, f"{self.replica}-{next(self._serials)}")
        self._tracks[session.conversation_id] = track
        if self._watch is not None:
            track.follower = asyncio.get_running_loop().create_task(self._follow(track))
        self._mark(track)

    def changed(self, session: Session) -> None:
        track = self._track_of(session)
        if track is not None:
            track.meta_sent = False
            self._mark(track)

    def retire(self, session: Session) -> None:
        """The session is dropped (deleted, replaced, expired): so is its copy. Called before
        its ring closes; the mirror lets go of the ring here."""
        track = self._track_of(session)
        if track is None:
            return
        del self._tracks[session.conversation_id]
        track.retired = True
        self._dirty.pop(track, None)
        self._unfollow(track)
        self._drops.append((track.conversation_id, track.gen))
        self._kick.set()

    def _track_of(self, session: Session) -> Track | None:
        track = self._tracks.get(session.conversation_id)
        return track if track is not None and track.session is session else None

    def _mark(self, track: Track) -> None:
        self._dirty[track] = None
        self._kick.set()

    # --- following the rings -------------------------------------------------------------------

    async def _follow(self, track: Track) -> None:
        """Wakes the writer when the ring has new bytes or ends; the worker's notes wake it."""
        assert self._watch is not None
        ring = track.session.ring
        waker = self._watch.follow(ring)
        while not track.ended:
            if ring.write_pos > track.sent or ring.state is not RingState.RUNNING:
                self._mark(track)
            await waker.wait()
        self._unfollow(track)

    def _unfollow(self, track: Track) -> None:
        if track.follower is None:
            return
        track.follower.cancel()
        track.follower = None
        if self._watch is not None:
            self._watch.unfollow(track.session.ring)

    # --- writing --------------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self._write()
            except (RedisError, OSError) as error:
                if self._connected:
                    log.warning("sessions: Redis %s failed (%s); retrying", store.shown(self.url),
                                error)  # fmt: skip
                self._connected, self._resync = False, True
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                self._kick.set()
                continue
            if not self._connected:
                log.info("sessions: Redis %s is back", store.shown(self.url))
            self._connected, failures = True, 0

    async def _write(self) -> None:
        if self._resync:
            await self._take_up()
        pipe = self._client.pipeline(transaction=False)
        drops = list(self._drops)
        for conversation_id, gen in drops:
            await self._drop(
                [store.meta_key(conversation_id), store.events_key(gen)], [gen], client=pipe
            )
        tracks = list(self._dirty)
        self._dirty.clear()  # a change made while this pass runs marks its session again
        more = [track for track in tracks if await self._add_track(pipe, track)]
        if len(pipe):
            await pipe.execute()
        for _ in drops:
            self._drops.popleft()
        for track in tracks:
            track.opened = track.claimed = True
        for track in more:
            if not track.retired:
                self._mark(track)

    async def _add_track(self, pipe: Pipeline, track: Track) -> bool:
        """Queue what Redis lacks of one session; True if bytes are left for the next pass.
        Sent offsets advance now: if the pipeline fails, `_take_up` reads them back."""
        ring, events = track.session.ring, store.events_key(track.gen)
        if not track.opened:
            pipe.xadd(events, {"open": b"1"}, id=store.OPENED_ID)
        if not track.meta_sent:
            await self._queue_meta(pipe, track)
        if track.retired:
            return False
        try:
            data = ring.read(track.sent, PASS_BYTES)
        except OffsetLost:  # Redis was away longer than the ring holds: go on from what it has
            track.sent, data = _oldest_event(ring)
        ended = ring.state is not RingState.RUNNING and track.sent + len(data) == ring.write_pos
        for event in mirror_entries(data, ended):
            track.sent += len(event)
            pipe.xadd(events, {"d": event}, id=store.entry_id(track.sent), nomkstream=True,
                      minid=store.entry_id(max(0, track.sent - ring.capacity)))  # fmt: skip
        if ended and track.sent == ring.write_pos and not track.ended:
            pipe.xadd(events, {"end": ring.state.name.lower()}, id=store.entry_id(track.sent, True),
                      nomkstream=True)  # fmt: skip
            track.ended = True
            await self._queue_meta(pipe, track)
        pipe.pexpire(events, self._ttl_ms)
        return ring.write_pos - track.sent >= PASS_BYTES

    async def _queue_meta(self, pipe: Pipeline, track: Track) -> None:
        meta = store.meta_key(track.conversation_id)
        takeover = "0" if track.claimed else "1"
        args = [
            track.gen, takeover, str(self._ttl_ms), track.conversation_id, store.stop_channel(""),
            "owner", self.replica, *track.record(),
        ]  # fmt: skip
        await self._put_meta([meta], args, client=pipe)
        track.meta_sent = True

    async def _take_up(self) -> None:
        """After a failure: where Redis's copy of each session stops (nothing, if Redis came
        back empty), so the next pass sends exactly what it lacks."""
        tracks = list(self._tracks.values())
        pipe = self._client.pipeline(transaction=False)
        for track in tracks:
            pipe.xrevrange(store.events_key(track.gen), count=1)
        lasts = await pipe.execute()
        for track, last in zip(tracks, lasts, strict=True):
            if track.retired:
                continue
            track.meta_sent = False
            track.opened = bool(last)
            track.sent = store.id_offset(last[0][0]) if last else 0
            track.ended = bool(last) and last[0][0].endswith(b"-1") and last[0][0] != b"0-1"
            if not track.ended and track.follower is None:
                track.follower = asyncio.get_running_loop().create_task(self._follow(track))
            self._dirty[track] = None
        self._resync = False

    # --- heartbeat and stops --------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        """Tells the other replicas this one lives, and keeps its live sessions from expiring
        (a finished one expires --stream-ttl-seconds after its end, as it does here)."""
        lapse_ms = int(store.OWNER_LAPSE_SECONDS * 1000)
        while True:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(store.replica_key(self.replica), b"1", px=lapse_ms)
            for track in self._tracks.values():
                if not track.ended:
                    pipe.pexpire(store.meta_key(track.conversation_id), self._ttl_ms)
                    pipe.pexpire(store.events_key(track.gen), self._ttl_ms)
            with contextlib.suppress(RedisError, OSError):  # the writer reports it
                await pipe.execute()
            await asyncio.sleep(store.HEARTBEAT_SECONDS)

    async def _listen_forever(self) -> None:
        """DELETEs made on other replicas for this one's sessions."""
        decoder = msgspec.json.Decoder(store.StopMessage)
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(store.stop_channel(self.replica))
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._stopped_elsewhere(decoder.decode(message["data"]))
            except (RedisError, OSError, msgspec.DecodeError):
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _stopped_elsewhere(self, stop: store.StopMessage) -> None:
        track = self._tracks.get(stop.conversation_id)
        if track is not None and track.gen == stop.gen:
            log.info("sessions: %r stopped from another replica", stop.conversation_id)
            self._stop(stop.conversation_id)

    async def close(self) -> None:
        """Stopping: send what is left (the drops of the sessions just stopped) for a moment,
        then say this replica is gone."""
        for track in list(self._tracks.values()):
            self._unfollow(track)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._write()
                await self._client.delete(store.replica_key(self.replica))
        await self._client.aclose()


def mirror_entries(data: bytes, ended: bool) -> list[bytes]:
    """The stream entries for `data`, read at an event's start: its whole events, and the rest
    once the session ended (a JSON answer's end, or a stream cut short). A full pass without an
    event's end (a JSON answer of over PASS_BYTES) goes whole: waiting for one would stall it."""
    events, rest = split_events(data)
    if rest and (ended or (not events and len(data) >= PASS_BYTES)):
        events.append(rest)
    return events


def _oldest_event(ring: Ring) -> tuple[int, bytes]:
    """The first event still whole in the ring, and what follows it in one pass."""
    while True:
        start = ring.start_pos
        try:
            return next_event(start, ring.read(start, PASS_BYTES))
        except OffsetLost:  # the writer went on meanwhile
            continue


def next_event(offset: int, data: bytes) -> tuple[int, bytes]:
    """`data` read at `offset` from the first event that begins in it (the first bytes may be
    the end of an event whose start is gone)."""
    boundary = data.find(b"\n\n")
    skip = len(data) if boundary < 0 else boundary + 2
    return offset + skip, data[skip:]
