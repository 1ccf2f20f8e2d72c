"""Sessions of other replicas, read from Redis (`--sessions-redis`): replay and live tail,
lookup, and stop. Only asked when this replica does not hold the session itself."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
from redis.exceptions import RedisError

from router import session_store as store
from router.http.responses import SSE_HEADERS, FollowingResponse, Send
from workers.errors import ApiError

log = logging.getLogger("llama-router")

PAGE = 512  # stream entries per read
BLOCK_MS = 1000  # a live tail's longest wait before it looks at the session's owner again
# The client's replies (bytes: it does not decode them)
Meta = dict[bytes, bytes]
Entries = list[tuple[bytes, Meta]]


class RemoteSessions:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client = store.connect(url)
        self._drop = self._client.register_script(store.DROP)

    def _unreachable(self, error: Exception) -> ApiError:
        return store.unreachable(self.url, error)

    async def follow(self, conversation_id: str, offset: int) -> RemoteSessionResponse:
        """The checks a local replay makes (404, 503 while loading, 400 for a lost or unknown
        offset) against Redis's copy, then a response that replays and follows it."""
        try:
            meta = cast(Meta, await self._client.hgetall(store.meta_key(conversation_id)))
            if not meta:
                raise ApiError(404, "Stream not found or expired")
            if meta[b"state"] == store.StoredState.PENDING.value.encode():
                raise ApiError(503, "the model of this stream is still loading, retry later")
            events = store.events_key(meta[b"gen"].decode())
            last = cast(Entries, await self._client.xrevrange(events, count=1))
            total = store.id_offset(last[0][0]) if last else 0
            if offset > total:
                raise ApiError(400, "Invalid 'from' offset")
            first = cast(Entries, await self._client.xrange(events, min=f"({offset}-0", count=PAGE))
        except store.UNREACHABLE as error:
            raise self._unreachable(error) from None
        if offset < total - int(meta[b"capacity"]) or _starts_after(first, offset):
            raise ApiError(400, "Stream offset lost, please restart")
        owner = meta[b"owner"].decode()
        return RemoteSessionResponse(self, conversation_id, meta[b"gen"], owner, offset, first)

    async def stop(self, conversation_id: str) -> None:
        """Tell the owner to stop it (within a token, as a local DELETE), and drop the copy
        now, so that an owner that is gone leaves nothing behind either."""
        meta_key = store.meta_key(conversation_id)
        try:
            gen, owner = cast(
                list[bytes | None], await self._client.hmget(meta_key, ["gen", "owner"])
            )
            if gen is None or owner is None:
                return
            stop = store.StopMessage(conversation_id, gen.decode())
            channel = store.stop_channel(owner.decode())
            await self._client.publish(channel, msgspec.json.encode(stop))
            await self._drop([meta_key, store.events_key(stop.gen)], [stop.gen])
        except store.UNREACHABLE as error:
            raise self._unreachable(error) from None

    async def lookup(self, wanted: list[str], local: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`local`'s rows, then those of sessions only other replicas hold. Without Redis,
        `local` alone if it has every id asked."""
        known = {row["conversation_id"] for row in local}
        try:
            keys = await self._matching_keys(wanted)
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            metas = [(key, meta) for key, meta in zip(keys, await pipe.execute(), strict=True)]
            metas = [(key, meta) for key, meta in metas if meta and b"gen" in meta]
            metas = [
                (key, meta) for key, meta in metas
                if key[len(store.meta_key("")):] not in known
            ]  # fmt: skip
            pipe = self._client.pipeline(transaction=False)
            for _, meta in metas:
                pipe.xrevrange(store.events_key(meta[b"gen"].decode()), count=1)
                pipe.exists(store.replica_key(meta[b"owner"].decode()))
            found = await pipe.execute()
        except store.UNREACHABLE as error:
            if known.issuperset(filter(None, wanted)):  # Redis would only add `ID::suffix` rows
                return local
            raise self._unreachable(error) from None
        rows = list(local)
        for (key, meta), last, owner_alive in zip(metas, found[::2], found[1::2], strict=True):
            rows.append(_row(key[len(store.meta_key("")) :], meta, last, bool(owner_alive)))
        return rows

    async def _matching_keys(self, wanted: list[str]) -> list[str]:
        """The records of ids asked exactly or as `ID::suffix` (a SCAN: lookups are rare)."""
        keys: dict[str, None] = {}
        for conversation_id in filter(None, wanted):
            keys[store.meta_key(conversation_id)] = None
            pattern = _glob_escape(store.meta_key(conversation_id)) + "::*"
            async for key in self._client.scan_iter(match=pattern, count=1000):
                keys[key.decode()] = None
        return list(keys)

    async def alive(self, conversation_id: str, gen: bytes, owner: str) -> bool | None:
        """Whether more bytes may come: None if the session was dropped or replaced (its
        stream just ends), False if its owner stopped beating (SIGKILLed, or cut off)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(store.meta_key(conversation_id), "gen")
        pipe.exists(store.replica_key(owner))
        current, owner_alive = await pipe.execute()
        if current != gen:
            return None
        return bool(owner_alive)

    async def read(self, gen: bytes, after: bytes, wait: bool) -> Entries:
        """The entries after `after`; with `wait`, the next ones once they come."""
        reply = await self._client.xread(
            {store.events_key(gen.decode()): after}, count=PAGE, block=BLOCK_MS if wait else None
        )
        return cast(list[tuple[bytes, Entries]], reply)[0][1] if reply else []

    async def close(self) -> None:
        await self._client.aclose()


class RemoteSessionResponse(FollowingResponse):
    """Replays another replica's session from `offset` out of Redis, then follows it live."""

    def __init__(
        self,
        sessions: RemoteSessions,
        conversation_id: str,
        gen: bytes,
        owner: str,
        offset: int,
        first: Entries,
    ) -> None:
        super().__init__()
        self._sessions = sessions
        self._conversation_id = conversation_id
        self._gen = gen
        self._owner = owner
        self.offset = offset
        self._entries = first
        self._last_id = f"{offset}-0".encode()
        self._replayed = False

    async def _respond(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async for data in self._follow():
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self) -> AsyncIterator[bytes]:
        sessions = self._sessions
        while not self._gone:
            for stream_id, fields in self._entries:
                self._last_id = stream_id
                if b"end" in fields:
                    return
                data = fields.get(b"d")
                end = store.id_offset(stream_id)
                if data is None or end <= self.offset:
                    continue  # the stream's opening entry
                if end - len(data) > self.offset:  # trimmed while this reader lagged
                    yield ApiError(400, "Stream offset lost, please restart").sse()
                    return
                yield data[len(data) - (end - self.offset) :]
                self.offset = end
            try:
                # Whatever Redis holds is replayed first, its owner alive or not; then, while
                # the owner lives, the tail waits for more.
                self._entries = await sessions.read(self._gen, self._last_id, self._replayed)
                if self._entries:
                    continue
                self._replayed = True
                alive = await sessions.alive(self._conversation_id, self._gen, self._owner)
            except (RedisError, OSError) as error:
                yield sessions._unreachable(error).sse()
                return
            if alive is None:
                return
            if not alive:
                yield ApiError(500, _OWNER_GONE).sse()
                return


_OWNER_GONE = (
    "the replica generating this stream is gone; the bytes it sent stay replayable until "
    "the stream's TTL"
)


def _starts_after(entries: Entries, offset: int) -> bool:
    """Whether the first bytes Redis holds past `offset` begin after it (a gap)."""
    for stream_id, fields in entries:
        data = fields.get(b"d")
        if data is not None:
            return store.id_offset(stream_id) - len(data) > offset
    return False


def _row(conversation_id: str, meta: dict[bytes, bytes], last: Entries, alive: bool) -> dict:
    done = meta[b"state"] == store.StoredState.DONE.value.encode() or not alive
    return {
        "conversation_id": conversation_id,
        "is_done": done,
        "total_bytes": store.id_offset(last[0][0]) if last else 0,
        "started_at": int(meta[b"started_ns"]) // 1_000_000_000,
        "completed_at": int(meta[b"completed_ns"]) // 1_000_000_000,
    }


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
