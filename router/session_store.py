"""Sessions shared by replicas through Redis (`--sessions-redis`): the names both sides use.

Per session, two keys:
- `llama-router:session:<conversation id>`, a hash: which replica owns it (`owner`), which of
  that id's sessions it is (`gen`, so a replaced session's late writes never touch its
  successor), `state`, `started_ns`, `completed_ns` and `capacity` (its ring's size).
- `llama-router:events:<gen>`, a stream: one entry per SSE event whose ID is `<offset just past
  the event>-0` with the bytes in field `d`, so `XRANGE (N-0 +` starts at the event holding byte
  N and `MINID` trims by bytes as the ring does; `0-1` opens it, `<total>-1` (field `end`, the
  ring's final state) closes it.
Each replica refreshes `llama-router:replica:<id>` while it lives; a session whose owner's key
has lapsed gets no more bytes. A replica listens on `llama-router:stop:<id>` for DELETEs made
elsewhere.
"""

from __future__ import annotations

import enum
from urllib.parse import urlsplit

import msgspec
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.errors import ApiError

PREFIX = "llama-router"
HEARTBEAT_SECONDS = 1.0
# An owner that missed this many heartbeats is gone (SIGKILLed, or cut off from Redis).
OWNER_LAPSE_SECONDS = 3 * HEARTBEAT_SECONDS
OPENED_ID = "0-1"
# Redis being down is told within this, not after a TCP timeout.
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 5.0

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


# A DELETE drops a session's copy, and its record unless a newer session of the id took it over.
# KEYS: meta, events; ARGV: gen
DROP = """
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
"""


class StoredState(enum.StrEnum):
    PENDING = "pending"  # its model is loading
    LIVE = "live"
    DONE = "done"


class StopMessage(msgspec.Struct, frozen=True):
    """Published to the owner: stop the session `gen` of `conversation_id`."""

    conversation_id: str
    gen: str


def meta_key(conversation_id: str) -> str:
    return f"{PREFIX}:session:{conversation_id}"


def events_key(gen: str) -> str:
    return f"{PREFIX}:events:{gen}"


def replica_key(replica: str) -> str:
    return f"{PREFIX}:replica:{replica}"


def stop_channel(replica: str) -> str:
    return f"{PREFIX}:stop:{replica}"


def entry_id(offset: int, end: bool = False) -> str:
    return f"{offset}-{1 if end else 0}"


def id_offset(stream_id: bytes) -> int:
    return int(stream_id.split(b"-", 1)[0])


def connect(url: str) -> redis.Redis:
    """A client that reconnects by itself: every command takes a pooled connection, and a
    broken one is replaced on the next command."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=10,
    )


def shown(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def unreachable(url: str, error: Exception) -> ApiError:
    return ApiError(
        503,
        f"the shared session store ({shown(url)}) is unreachable: "
        f"{error or type(error).__name__}; "
        "sessions of other replicas cannot be read or stopped until it is back",
    )
