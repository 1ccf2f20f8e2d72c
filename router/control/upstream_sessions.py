"""A session whose model is remote: the main process copies the upstream's answer into the
session's ring exactly as a model worker writes one (SSE events, each with its `id:` offset, or
one JSON body), so that replay, live tail and DELETE work as for a local model."""

from __future__ import annotations

from router.upstream import UpstreamClient, UpstreamRoute, chunks
from workers.errors import ApiError
from workers.notes import NoteSender
from workers.ring import Media, Ring, RingState, split_events, with_event_id, write_error


async def copy_upstream(
    client: UpstreamClient,
    route: UpstreamRoute,
    api_route: str,
    body: bytes,
    ring: Ring,
    notes: NoteSender,
) -> None:
    """Send the request upstream and write its answer into `ring`; cancelled, it stops the
    upstream request (the connection closes)."""
    started = False

    def wrote() -> None:
        notes.send(ring.reader_processes(), ring.key)

    try:
        async with client.open(route.target, route.model_id, api_route, body) as response:
            media = response.headers.get("content-type", "")
            if not media.startswith("text/event-stream"):
                answer = b"".join([chunk async for chunk in chunks(response, route.target.base)])
                ring.begin(response.status, Media.JSON)
                ring.write(answer)
                return
            ring.begin(200, Media.EVENT_STREAM)
            started = True
            pending = b""
            async for chunk in chunks(response, route.target.base):
                events, pending = split_events((pending + chunk).replace(b"\r\n", b"\n"))
                for event in events:
                    if event.strip():
                        ring.write(with_event_id(event, ring.write_pos))
                if events:
                    wrote()
                if ring.cancelled:
                    return
            if pending.strip():  # the upstream ended without the last blank line
                ring.write(with_event_id(pending.rstrip(b"\r\n") + b"\n\n", ring.write_pos))
    except ApiError as error:
        write_error(ring, error, started)
    finally:
        ring.finish(RingState.DONE)
        wrote()
