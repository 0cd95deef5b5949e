"""``WS /v1/videos/{id}/stream``: a video's frames as they are made.

A JSON ``init`` message with the MIME type for ``MediaSource.addSourceBuffer``, the init
segment (binary), then one binary fMP4 fragment per frame as it is made, JSON
``status``/``progress`` messages in between and a final JSON ``end`` message. Every viewer
reads the job's frame stream from its first entry and then follows it live, so one who
joins late or reconnects gets the same bytes from the start.
"""

from __future__ import annotations

import asyncio

import anyio
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pomstream.server.http.deps import deny, ws_owner
from pomstream.server.http.errors import invalid, not_found, unavailable
from pomstream.server.http.follow import StreamFollower
from pomstream.server.http.validation import Invalid, check_video_id
from pomstream.server.store import (
    EndEntry,
    EventEntry,
    FragmentEntry,
    InitEntry,
    JobQueue,
    QueueUnavailable,
)

router = APIRouter(prefix="/v1")  # auth is checked in the handler, before accepting


@router.websocket("/videos/{video_id}/stream")
async def stream(ws: WebSocket, video_id: str):
    allowed = await ws_owner(ws)
    if allowed is None:
        return
    tenant, subprotocol = allowed
    rt = ws.app.state.runtime
    try:
        check_video_id(video_id)
        record = await anyio.to_thread.run_sync(rt.queue.get_job, video_id)
    except Invalid as exc:
        return await deny(ws, invalid(exc))
    except QueueUnavailable:
        return await deny(ws, unavailable())
    if record is None or record.get("kind", "video") != "video" or not tenant.owns(record):
        return await deny(ws, not_found(video_id))
    await ws.accept(subprotocol=subprotocol)
    # A receive task notices a viewer that went away while the job is still queued.
    gone = asyncio.ensure_future(_until_disconnect(ws))
    try:
        await ws.send_json({"type": "status", "status": record["status"], "id": video_id})
        await _forward(ws, rt.queue, video_id, gone, ws.app.state.ws_limiter)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the viewer left mid-send
    except QueueUnavailable:
        await _close(ws, 1011, "job store unavailable")
    finally:
        gone.cancel()


async def _until_disconnect(ws: WebSocket) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _forward(ws: WebSocket, queue: JobQueue, video_id: str, gone: asyncio.Future,
                   limiter: anyio.CapacityLimiter) -> None:
    """Replay the job's frame stream from the start, then follow it until its end."""
    fragments = 0
    async for entries in StreamFollower(queue, video_id, limiter=limiter, count=64).batches():
        if gone.done():
            return
        if not entries:
            if await anyio.to_thread.run_sync(queue.get_job, video_id) is None:
                await ws.send_json({"type": "end", "status": "deleted", "error": None,
                                    "frames": fragments})
                return await _close(ws, 1000, "deleted")
            continue
        for entry in entries:
            if isinstance(entry, InitEntry):
                await ws.send_json({"type": "init", "mime": entry.mime, "id": video_id})
                await ws.send_bytes(entry.data)
            elif isinstance(entry, FragmentEntry):
                fragments += 1
                await ws.send_bytes(entry.data)
            elif isinstance(entry, EventEntry):
                await ws.send_json(entry.event)
            elif isinstance(entry, EndEntry):
                await ws.send_json({"type": "end", "status": entry.status,
                                    "error": entry.error, "frames": fragments})
                return await _close(ws, 1000, entry.status)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason)
    except RuntimeError:
        pass  # already closed by the viewer
