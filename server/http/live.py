"""``WS /v1/sessions``: live sessions over one WebSocket.

Design (keys, pacing, attach/detach, forks): :mod:`pomstream.server.store.sessions`.

Protocol
--------
The client's first message opens a session or resumes one, every later one steers it; all
are JSON text messages::

    {"type": "start", "prompt": "digit 3", "seed": 7, "size": "16x16", "ack": false}
    {"type": "resume", "session_id": "sess_..."}     (first message: attach to a session)
    {"type": "prompt", "prompt": "digit 5"}          change what the next frames show
    {"type": "pause"} / {"type": "resume"}           stop / go on generating and sending
    {"type": "fork"}                                 a new session from the current state
    {"type": "stop"}                                 end the session for good
    {"type": "ack", "frame": 41}                     (with "ack": true) last frame played

The server answers with JSON ``session`` (id, status, fps, ``frame``: where a detached
session resumes (its snapshot; a session still running when resumed, a takeover, goes on at
a later frame, its next cut), and ``base``: the frame at media time 0, non-zero for forks),
``init`` (MIME type for
``addSourceBuffer``) followed by the init segment as a binary message, then per frame a JSON
``frame`` message (its index, keyframe flag and ``made_ms``, the unix time in ms at which the
worker stored it) followed by the fragment as a binary message. Also ``prompt``, ``paused``,
``resumed``, ``forked`` (``fork_id``: the new session's id), ``status``, ``error`` and a
final ``end``. ``status`` says where the session stands: ``queued`` with ``ahead`` (queued
jobs before it) every 2 s until a worker takes it, then ``live`` when it starts and every
2 s while it runs, with ``fps`` (its frame rate over those 2 s), ``held`` (jobs its worker
holds) and ``slots`` (its batch size): more held than slots means they take turns.

Admission: a ``start`` that no worker could serve at ``POMSTREAM_MIN_SESSION_FPS`` (their
spare room, net of what already waits, is gone) gets ``error`` ``server_busy`` with
``retry_after`` (seconds); the connection stays open for another try.

Pacing: the handler tells the worker the last frame delivered (sent, or acked by the client
when it asked for acks); the worker stays within a window of frames ahead of it. A resumed
or taken-over session starts with a keyframe: the handler skips fragments until one comes
and asks a running worker for a cut.

Errors: a bad value (an empty or too long prompt, a wrong size, an unknown session id) gets a
JSON ``error`` and the connection stays open; a protocol violation (not JSON, not an object,
a binary message, an unknown type, a control before ``start``, an oversized message) gets a
JSON ``error`` and close code 1008. Nothing a client sends raises out of the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections import deque
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pomstream.server.engine.jobs import SessionJob, WorkerDead, new_session_id
from pomstream.server.http.deps import Tenant, claim_slot, submit_within_limit, ws_owner
from pomstream.server.http.errors import ApiError, unavailable
from pomstream.server.http.follow import StreamFollower
from pomstream.server.http.validation import (
    Invalid,
    check_prompt,
    check_seed,
    check_size,
    is_session_id,
)
from pomstream.server.settings import Settings
from pomstream.server.store import (
    EndEntry,
    EventEntry,
    FragmentEntry,
    InitEntry,
    QueueUnavailable,
    SessionEnded,
    SessionNotFound,
    SessionStore,
    WorkerRegistry,
)

log = logging.getLogger("pomstream.live")

MAX_MESSAGE_CHARS = 16 * 1024
START_TIMEOUT_S = 30.0
READ_BLOCK_MS = 1000
CONTROLS = ("prompt", "pause", "resume", "fork", "stop", "ack")


class ProtocolError(Exception):
    """The client broke the protocol: error message, then close 1008."""


class TakenOver(Exception):
    """Another connection resumed this session: this one ends."""


class BadValue(Exception):
    """A well-formed message with a value the server refuses: error message, go on."""

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after

    def event(self) -> dict[str, Any]:
        event = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after is not None:
            event["retry_after"] = self.retry_after
        return event


BUSY_RETRY_S = 5  # retry_after of a server_busy refusal (seconds)
QUEUED_STATUS_EVERY_S = 2.0  # how often a waiting session hears where it stands

router = APIRouter(prefix="/v1")  # auth is checked in the handler, before accepting


def admission_lock(state) -> asyncio.Lock:
    """One lock per app: the room check and the submit of a new session happen together,
    so concurrent starts each count the ones queued before them."""
    lock = getattr(state, "session_admission", None)
    if lock is None:
        lock = state.session_admission = asyncio.Lock()
    return lock


def session_store(ws: WebSocket) -> SessionStore:
    state = ws.app.state
    if state.sessions is None:
        state.sessions = SessionStore(state.runtime.queue, state.settings.viewer_timeout_s)
    return state.sessions


@router.websocket("/sessions")
async def sessions(ws: WebSocket) -> None:
    allowed = await ws_owner(ws)
    if allowed is None:
        return
    tenant, subprotocol = allowed
    await ws.accept(subprotocol=subprotocol)
    conn = LiveConnection(ws, ws.app.state.settings, tenant)
    ws.app.state.live_viewers += 1
    try:
        await conn.run()
    except WorkerDead:
        await conn.close_with_error("worker_unavailable", "the video worker of this server "
                                    "is not running", 1011)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send
    except ProtocolError as exc:
        await conn.close_with_error("protocol_error", str(exc), 1008)
    except TakenOver:
        await conn.close_with_error("taken_over", "another viewer resumed this session", 1000)
    except QueueUnavailable:
        await conn.close_with_error("service_unavailable", unavailable().message, 1011)
    except Exception:  # a bug: log it, tell the client, keep the server up
        log.exception("live.error")
        await conn.close_with_error("internal_error", "internal error", 1011)
    finally:
        ws.app.state.live_viewers -= 1
        await conn.leave()


class LiveConnection:
    """One client's WebSocket: its session, the frame forwarder and the control loop."""

    def __init__(self, ws: WebSocket, settings: Settings, tenant: Tenant | None = None):
        self.ws, self.settings = ws, settings
        self.tenant = tenant or Tenant("local")
        self.owner = self.tenant.owner
        self.rt, self.store = ws.app.state.runtime, session_store(ws)
        self.sid: str | None = None
        self.token = secrets.token_hex(8)
        self.base = 0
        self.cursor = "0-0"
        self.client_acks = False
        self.sent = -1  # last frame sent
        self.played = -1  # last frame the client acked (with client acks)
        self.init_sent = False
        self.need_key = True
        self.paused = False
        self.unpaused = asyncio.Event()
        self.lock = asyncio.Lock()  # a frame's JSON and binary go out together
        self.recent: deque[float] = deque()  # when accepted messages came (the last second)

    # -- plumbing ---------------------------------------------------------------------------

    async def call(self, fn, *args, **kwargs):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                              limiter=self.ws.app.state.ws_limiter)

    async def send(self, message: dict[str, Any], data: bytes | None = None) -> None:
        async with self.lock:
            await self.ws.send_text(json.dumps(message))
            if data is not None:
                await self.ws.send_bytes(data)

    async def close_with_error(self, code: str, message: str, close_code: int) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.send({"type": "error", "code": code, "message": message})
            await self.ws.close(code=close_code, reason=message[:120])

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.receive(), timeout)
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            raise ProtocolError("send JSON text messages, not binary ones")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ProtocolError(f"message longer than {MAX_MESSAGE_CHARS} characters")
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:  # bad JSON, huge ints, deep nesting
            raise ProtocolError(f"message is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ProtocolError('a message is a JSON object with a string "type"')
        return body

    async def leave(self) -> None:
        if self.sid is not None:
            with contextlib.suppress(Exception):  # Redis down: the viewer times out anyway
                await self.call(self.store.leave, self.sid, self.token)

    # -- the session ------------------------------------------------------------------------

    def within_rate(self) -> None:
        """Count a message against the connection's rate (``ws_messages_per_second``);
        BadValue ``rate_limited`` (the message is dropped, and not counted) beyond it."""
        limit, now = self.settings.ws_messages_per_second, time.monotonic()
        while self.recent and now - self.recent[0] > 1.0:
            self.recent.popleft()
        if len(self.recent) >= limit:
            raise BadValue("rate_limited", f"more than {limit} messages a second on this "
                           "connection; this one was dropped")
        self.recent.append(now)

    async def run(self) -> None:
        opened_by = time.monotonic() + START_TIMEOUT_S  # the whole opening, not per message
        try:
            while self.sid is None:
                msg = await self.receive(max(0.0, opened_by - time.monotonic()))
                try:
                    self.within_rate()
                except BadValue as exc:
                    await self.send(exc.event())
                    continue
                await self.open(msg)
                if self.sid is None:  # refused (busy, a bad value): a fresh wait to retry
                    opened_by = time.monotonic() + START_TIMEOUT_S
        except TimeoutError:
            raise ProtocolError(f"no start or resume message within {START_TIMEOUT_S:.0f} s")\
                from None
        forward = asyncio.ensure_future(self.forward())
        control = asyncio.ensure_future(self.control_loop())
        queued = asyncio.ensure_future(self.report_queued())
        try:
            done, _ = await asyncio.wait({forward, control},
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise ProtocolError, disconnects, Redis errors
        finally:
            for task in (forward, control, queued):
                task.cancel()

    async def report_queued(self) -> None:
        """Until a worker runs the session (its init segment arrives), tell the client
        every QUEUED_STATUS_EVERY_S how many queued jobs wait before it."""
        while not self.init_sent:
            await asyncio.sleep(QUEUED_STATUS_EVERY_S)
            try:
                ahead = await self.call(self.rt.queue.waiting_ahead, self.sid)
                if ahead is not None and not self.init_sent:
                    await self.send({"type": "status", "status": "queued", "ahead": ahead,
                                     "session_id": self.sid})
            except Exception:  # noqa: BLE001 - Redis down, socket gone: the other tasks say so
                return

    async def open(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind not in ("start", "resume"):
            raise ProtocolError(f'the first message must be "start" or "resume", got {kind!r}')
        try:
            await (self.start(msg) if kind == "start" else self.attach(msg))
        except BadValue as exc:
            await self.send(exc.event())

    async def start(self, msg: dict[str, Any]) -> None:
        info = self.rt.info
        prompt = self.check_prompt(msg.get("prompt"))
        try:
            size = check_size(msg.get("size"), info.size)
            seed = check_seed(msg.get("seed"))
        except Invalid as exc:
            raise BadValue(exc.code, exc.message) from None
        self.client_acks = self.check_ack_flag(msg)
        if self.rt.worker is not None:  # serve: its only worker died, nothing would run
            self.rt.worker.check_alive()
        job = SessionJob(new_session_id(), prompt, seed, size, info.name, owner=self.owner)
        async with admission_lock(self.ws.app.state):  # a burst of starts sees its own queue
            await self.check_room()
            await self.within_limit(submit_within_limit, self.rt.queue, self.settings,
                                    self.owner, job.payload(),
                                    functools.partial(self.store.prepare, job.id, self.token))
        self.sid = job.id
        await self.send({"type": "session", "session_id": job.id, "status": "queued",
                         "frame": 0, "resumed": False, "seed": seed, "fps": info.fps,
                         "base": 0})

    async def attach(self, msg: dict[str, Any]) -> None:
        sid = msg.get("session_id")
        if not is_session_id(sid):
            raise BadValue("invalid_session_id", "session_id must be a session id (sess_...)")
        record = await self.call(self.rt.queue.get_job, sid)
        if record is None or record.get("kind") != "session" or not self.tenant.owns(record):
            raise BadValue("not_found", f"no session with id {sid!r}")
        self.client_acks = self.check_ack_flag(msg)
        job = SessionJob.from_payload(record).payload()
        # the session's own key's limit (an admin resuming someone's session holds no slot
        # of its own for it); the session exists: submitted long ago
        owner = str(record.get("owner") or "local")
        await self.within_limit(claim_slot, self.rt.queue, self.settings, owner, sid, True)
        # the snapshot before the cursor: every fragment before a snapshot's frame is stored
        # before the snapshot, so all that follows the cursor is at that frame or later
        snap = await self.call(self.rt.queue.load_snapshot, sid)
        try:
            attached = await self.call(self.store.attach, sid, self.token, job)
        except SessionNotFound:
            raise BadValue("not_found", f"no session with id {sid!r}") from None
        except SessionEnded:
            raise BadValue("session_ended", f"session {sid} was stopped") from None
        self.sid, self.cursor, self.base = sid, attached.cursor, int(record.get("base") or 0)
        frame = snap.frame_index if snap else self.base
        await self.send({"type": "session", "session_id": sid, "status": attached.state,
                         "frame": frame, "resumed": True, "seed": record.get("seed"),
                         "fps": self.rt.info.fps, "base": self.base})
        init = await self.call(self.rt.queue.get_init, sid)
        if init is not None:
            await self.send_init(init.mime, init.data)
        if attached.state == "live":  # a worker runs it: ask for a keyframe to start from
            await self.call(self.store.send, sid, {"op": "keyframe"})

    async def check_room(self) -> None:
        """Refuse a session that no worker would serve at its minimum frame rate now
        (what waits in the queue already takes the workers' spare room): a live viewer
        gains nothing from waiting in a queue without a frame."""
        spare = await self.call(WorkerRegistry(self.rt.queue).spare)
        if spare is None:  # no worker reports room (none alive): the queue holds it
            return
        length, held = await self.call(self.rt.queue.depth)
        if spare <= length - held:
            raise BadValue("server_busy", "every worker runs as many live sessions as it can "
                           "at the minimum frame rate; try again shortly", BUSY_RETRY_S)

    async def within_limit(self, fn, *args) -> None:
        """Run a slot claim (deps.py) against the key's limit on running work; a full
        limit is an error message to the client, not the end of the connection."""
        try:
            await self.call(fn, *args)
        except ApiError as exc:
            raise BadValue(exc.code, exc.message) from None

    def check_prompt(self, prompt: Any) -> str:
        try:
            return check_prompt(prompt, self.rt.info.prompt_rules)
        except Invalid as exc:
            raise BadValue(exc.code, exc.message) from None

    @staticmethod
    def check_ack_flag(msg: dict[str, Any]) -> bool:
        ack = msg.get("ack", False)
        if not isinstance(ack, bool):
            raise BadValue("invalid_value", '"ack" must be true or false')
        return ack

    # -- worker -> client -------------------------------------------------------------------

    async def send_init(self, mime: str, data: bytes) -> None:
        if not self.init_sent:
            self.init_sent = True
            await self.send({"type": "init", "mime": mime, "session_id": self.sid}, data)

    async def forward(self) -> None:
        """Follow the session's frame stream and send what the client needs."""
        try:
            await self.follow()
        except TakenOver:
            await self.close_with_error("taken_over", "another viewer resumed this session",
                                        1000)

    async def follow(self) -> None:
        follower = StreamFollower(self.rt.queue, self.sid, self.cursor,
                                  self.ws.app.state.ws_limiter, count=32)
        async for entries in follower.batches():
            for entry in entries:
                self.cursor = entry.entry_id
                if isinstance(entry, InitEntry):
                    await self.send_init(entry.mime, entry.data)
                elif isinstance(entry, FragmentEntry):
                    await self.deliver(entry)
                elif isinstance(entry, EventEntry):
                    await self.send({**entry.event, "session_id": self.sid})
                elif isinstance(entry, EndEntry):
                    await self.send({"type": "end", "status": entry.status,
                                     "error": entry.error, "frame": self.sent})
                    await self.ws.close(code=1000, reason=entry.status)
                    return
            await self.report()

    async def deliver(self, entry: FragmentEntry) -> None:
        frame = self.base + entry.index
        if self.need_key and not entry.keyframe:
            self.sent = frame  # cannot be decoded without its keyframe: skip, count as sent
            return
        self.need_key = False
        message = {"type": "frame", "frame": frame, "keyframe": entry.keyframe,
                   "made_ms": int(entry.entry_id.split("-")[0])}
        while True:
            async with self.lock:
                if not self.paused:  # checked under the lock: nothing goes out after "paused"
                    await self.ws.send_text(json.dumps(message))
                    await self.ws.send_bytes(entry.data)
                    self.sent = frame
                    return
            await self.wait_unpaused()

    async def wait_unpaused(self) -> None:
        while self.paused:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.unpaused.wait(), 1.0)
            await self.report()

    async def report(self) -> None:
        """Tell the worker what was delivered (and that the viewer is alive); TakenOver if
        another connection resumed the session meanwhile."""
        delivered = min(self.sent, self.played) if self.client_acks else self.sent
        if not await self.call(self.store.touch, self.sid, self.token, acked=delivered,
                               paused=self.paused):
            raise TakenOver

    # -- client -> worker -------------------------------------------------------------------

    async def control_loop(self) -> None:
        while True:
            msg = await self.receive()
            try:
                self.within_rate()
                await self.control(msg)
            except BadValue as exc:
                await self.send(exc.event())

    async def control(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind not in CONTROLS:
            raise ProtocolError(f"unknown message type {kind!r}; expected one of {CONTROLS}")
        if kind == "resume" and msg.get("session_id") not in (None, self.sid):
            raise ProtocolError("this connection already carries a session; open another "
                                "one to resume a different session")
        await getattr(self, f"on_{kind}")(msg)

    async def on_prompt(self, msg: dict[str, Any]) -> None:
        prompt = self.check_prompt(msg.get("prompt"))
        await self.call(self.store.send, self.sid, {"op": "prompt", "prompt": prompt})
        await self.send({"type": "prompt", "prompt": prompt, "session_id": self.sid})

    async def on_pause(self, _msg: dict[str, Any]) -> None:
        async with self.lock:
            self.paused = True
            self.unpaused.clear()
            await self.ws.send_text(json.dumps({"type": "paused", "frame": self.sent,
                                                "session_id": self.sid}))
        await self.report()

    async def on_resume(self, _msg: dict[str, Any]) -> None:
        self.paused = False
        self.unpaused.set()
        await self.report()
        await self.send({"type": "resumed", "frame": self.sent, "session_id": self.sid})

    async def on_fork(self, _msg: dict[str, Any]) -> None:
        await self.call(self.store.send, self.sid, {"op": "fork"})

    async def on_stop(self, _msg: dict[str, Any]) -> None:
        await self.call(self.store.send, self.sid, {"op": "stop"})
        await self.send({"type": "stopping", "session_id": self.sid})

    async def on_ack(self, msg: dict[str, Any]) -> None:
        frame = msg.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < -1:
            raise BadValue("invalid_value", '"frame" must be an integer >= -1')
        self.played = max(self.played, min(frame, self.sent))
