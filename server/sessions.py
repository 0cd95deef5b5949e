"""Live sessions: unlimited streams steered by their viewer, run by the same workers as videos.

A live session is a job of kind ``session`` in the same queue as videos. A worker runs it in
the same batched ``generator.step`` as its videos (continuous batching), encodes it on a
lane and appends its fragments to the job's frame stream, exactly like a video, except that
it has no frame count: it runs until its viewer stops it or goes away.

Who talks to whom
-----------------
The WebSocket handler (:mod:`server.live_ws`) and the worker may be different processes, so
they only meet in Redis (all keys under the queue's prefix):

=============================  ========  ===================================================
``{p}:job:{id}``               hash      the job record (kind ``session``); ``state`` is
                                         ``queued``, ``live``, ``detached`` or ``stopped``
``{p}:frames:{id}``            stream    init, fragments, events (as for videos), trimmed
``{p}:view:{id}``              hash      the attached viewer: ``viewer`` (a token),
                                         ``seen`` (unix time), ``acked``, ``paused``
``{p}:ctl:{id}``               stream    control messages for the worker: prompt, keyframe,
                                         fork, stop
=============================  ========  ===================================================

* Worker -> viewer: the frame stream (the handler follows it from the entry that was last
  when it attached). Worker events (``forked``, ``status``, errors) go there too.
* Viewer -> worker: pause/resume and pacing are *state* (the view hash), read by the worker
  before every frame in one pipelined round trip for all its sessions; prompt, fork, stop
  and keyframe requests are *messages* (the control stream), applied between frames and
  deleted once applied.

Pacing (backpressure)
---------------------
The handler writes ``acked``: the last frame it delivered (sent on the socket, or, when the
client asked for acks, the last frame the client reported as played). The worker generates
frame ``f`` only while ``f - (acked + 1) < window``: a slow viewer holds its session at most
``window`` frames ahead, and a session that waits costs the batch nothing (it just sits out
of ``generator.step``). Paused sessions sit out the same way. A viewer that takes over a
running session has seen nothing yet: its ``keyframe`` request also restarts the window at
the cut.

Attach, detach, resume
----------------------
``attach`` (the handler, one Lua script) makes a viewer the session's only viewer (a second
one takes over; the first notices its token is gone and closes), clears stale control
messages and, if the session was ``detached``, queues it again. A worker that takes a session
job ``settle`` s it (one script): with a fresh viewer it goes ``live``, without one it goes
``detached`` and the job is acked. When the viewer leaves (the handler removes its token, or
its ``seen`` goes stale because the API process died) the worker snapshots the session at its
current frame and settles it again: detached (acked, keys get the video TTL) or, if a viewer
attached meanwhile, released back to the queue. Because attach and settle are atomic, a
session is never queued twice nor left detached with a viewer waiting.

Exact regeneration
------------------
A snapshot is stored only at points from which the stream can be regenerated bit for bit:
keyframes of the cadence (every ``snapshot_every`` frames, as for videos) and *cuts*. A cut
restarts the encoder at the current frame (an IDR frame, ``LiveEncoder(cut=True)``) right
after a snapshot: every run starts with one (resume after a detach, takeover by another
worker, graceful stop) and so does every prompt change. A worker that resumes from a snapshot
therefore makes the same frames (same state, RNG and prompt) and the same bytes, and
fragments already in the stream are skipped by index. Known limit: a worker killed between
applying a prompt change and storing its snapshot (one lane hop) resumes from the previous
snapshot and applies the prompt a few frames early, so the viewer sees a glitch until the
next keyframe.

Forks
-----
``fork`` snapshots the session at its current frame and creates a new session from it: a
queued job (its record and snapshot) with ``base`` = that frame. Its frame stream numbers
fragments from 0 (the queue refuses gaps), so fragment ``i`` of a fork is frame
``base + i``; clients are always told the session's frame index. No viewer is attached, so
the first worker to take it settles it as ``detached`` until someone resumes it by id.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pomstream.media.fmp4 import LiveEncoder
from pomstream.server.queue import JobQueue, Lease, check_id, new_job_id

log = logging.getLogger("pomstream.sessions")

SESSION_STATES = ("queued", "live", "detached", "stopped")
TRIM_EVERY = 64  # frames between trims of a session's frame stream
KEEP_ENTRIES = 512  # entries a trimmed frame stream keeps (far more than any window)


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- the job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionJob:
    """What a queued session job carries (the payload of its queue entry)."""

    id: str
    prompt: str
    seed: int
    size: str
    model: str
    base: int = 0  # frame index of fragment 0 (a fork's starting frame)
    forked_from: str | None = None
    frames = None  # unlimited

    def payload(self) -> dict[str, Any]:
        return {"kind": "session", "id": self.id, "prompt": self.prompt, "seed": self.seed,
                "size": self.size, "model": self.model, "base": self.base,
                "forked_from": self.forked_from, "state": "queued"}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> SessionJob:
        return cls(id=check_id(data["id"], "session id"), prompt=str(data["prompt"]),
                   seed=int(data["seed"]), size=str(data["size"]), model=str(data["model"]),
                   base=int(data.get("base") or 0), forked_from=data.get("forked_from"))


def new_session_id() -> str:
    return new_job_id("sess")


# --- Redis ------------------------------------------------------------------------------

# KEYS: record, view, ctl, queue, frames, keys to persist... ARGV: token, now, job JSON.
# Returns {status, cursor, state}: status ok / gone / ended.
_ATTACH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', '', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == '"completed"' or status == '"failed"' then return {'ended', '', ''} end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'viewer', ARGV[1], 'seen', ARGV[2], 'acked', '-1', 'paused', '0')
redis.call('PERSIST', KEYS[1])
for i = 6, #KEYS do redis.call('PERSIST', KEYS[i]) end
redis.call('HSET', KEYS[1], 'expires_at', 'null')
local state = redis.call('HGET', KEYS[1], 'state') or ''
if state == '"detached"' then
  redis.call('HSET', KEYS[1], 'state', '"queued"')
  redis.call('XADD', KEYS[4], '*', 'job', ARGV[3])
end
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local cursor = '0-0'
if #last > 0 then cursor = last[1][1] end
return {'ok', cursor, state}
"""

# KEYS: record, view. ARGV: now, stale seconds. 1: a fresh viewer (live), 0: none
# (detached), -1: no record.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HMGET', KEYS[2], 'viewer', 'seen')
if v[1] and tonumber(v[2]) and tonumber(v[2]) >= tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', '"live"')
  return 1
end
redis.call('HSET', KEYS[1], 'state', '"detached"')
return 0
"""

# KEYS: view. ARGV: token, now, acked ('' to keep), paused ('' to keep). 0: taken over.
_TOUCH = """
if redis.call('HGET', KEYS[1], 'viewer') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'acked', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'paused', ARGV[4]) end
return 1
"""

# KEYS: view. ARGV: token.
_LEAVE = """
if redis.call('HGET', KEYS[1], 'viewer') == ARGV[1] then redis.call('HDEL', KEYS[1], 'viewer') end
return 1
"""


@dataclass(frozen=True)
class Attached:
    cursor: str  # the frame stream's last entry when the viewer attached
    state: str  # the session's state before attaching


@dataclass(frozen=True)
class ViewState:
    viewer: bool
    seen: float
    acked: int
    paused: bool


class SessionNotFound(LookupError):
    pass


class SessionEnded(Exception):
    pass


class SessionStore:
    """The session keys beside a :class:`~server.queue.JobQueue` (same client and prefix)."""

    def __init__(self, queue: JobQueue, viewer_timeout_s: float = 15.0):
        self.queue, self.redis, self.keys = queue, queue.redis, queue.keys
        self.viewer_timeout_s = viewer_timeout_s
        self._scripts = {name: self.redis.register_script(src) for name, src in
                         (("attach", _ATTACH), ("settle", _SETTLE), ("touch", _TOUCH),
                          ("leave", _LEAVE))}

    def view_key(self, sid: str) -> str:
        return f"{self.keys.prefix}:view:{check_id(sid, 'session id')}"

    def ctl_key(self, sid: str) -> str:
        return f"{self.keys.prefix}:ctl:{check_id(sid, 'session id')}"

    # -- the viewer's side ----------------------------------------------------------------

    def attach(self, sid: str, token: str, job: dict[str, Any]) -> Attached:
        k = self.keys
        keys = [k.job(sid), self.view_key(sid), self.ctl_key(sid), k.queue, k.frames(sid),
                k.meta(sid), k.snapshot(sid), k.cancel(sid)]
        status, cursor, state = (v.decode() if isinstance(v, bytes) else v for v in
                                 self._scripts["attach"](keys=keys,
                                                         args=[token, time.time(), _j(job)]))
        if status == "gone":
            raise SessionNotFound(sid)
        if status == "ended":
            raise SessionEnded(sid)
        return Attached(cursor, json.loads(state) if state else "")

    def prepare(self, sid: str, token: str) -> None:
        """The viewer of a new session, written before its job is queued (so the worker
        that takes it finds a viewer)."""
        key = self.view_key(sid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key, self.ctl_key(sid))
        pipe.hset(key, mapping={"viewer": token, "seen": time.time(), "acked": -1,
                                "paused": 0})
        pipe.execute()

    def touch(self, sid: str, token: str, acked: int | None = None,
              paused: bool | None = None) -> bool:
        """Say the viewer is still there (and what it has seen); False if taken over."""
        args = [token, time.time(), "" if acked is None else int(acked),
                "" if paused is None else int(paused)]
        return bool(self._scripts["touch"](keys=[self.view_key(sid)], args=args))

    def leave(self, sid: str, token: str) -> None:
        self._scripts["leave"](keys=[self.view_key(sid)], args=[token])

    def send(self, sid: str, message: dict[str, Any]) -> None:
        self.redis.xadd(self.ctl_key(sid), {"data": _j(message)}, maxlen=256, approximate=True)

    # -- the worker's side ----------------------------------------------------------------

    def settle(self, sid: str) -> int:
        """live (1) with a fresh viewer, else detached (0); -1 if the session is gone."""
        return int(self._scripts["settle"](keys=[self.queue.keys.job(sid), self.view_key(sid)],
                                           args=[time.time(), self.viewer_timeout_s]))

    def poll(self, cursors: dict[str, str]) -> tuple[dict[str, ViewState],
                                                       dict[str, list[tuple[str, dict]]]]:
        """Every session's view state and new control messages, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in cursors:
            pipe.hmget(self.view_key(sid), ["viewer", "seen", "acked", "paused"])
        pipe.xread({self.ctl_key(sid): cur for sid, cur in cursors.items()}, count=16)
        *views, ctl = pipe.execute()
        now, states = time.time(), {}
        for sid, (viewer, seen, acked, paused) in zip(cursors, views, strict=True):
            fresh = viewer is not None and float(seen or 0) >= now - self.viewer_timeout_s
            states[sid] = ViewState(fresh, float(seen or 0), int(acked or -1),
                                    paused == b"1")
        return states, self._messages(ctl)

    def _messages(self, reply: Any) -> dict[str, list[tuple[str, dict]]]:
        out: dict[str, list[tuple[str, dict]]] = {}
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        prefix = f"{self.keys.prefix}:ctl:"
        for key, entries in items:
            sid = (key.decode() if isinstance(key, bytes) else key)[len(prefix):]
            if entries and isinstance(entries[0], list) and entries[0] and \
                    isinstance(entries[0][0], list):
                entries = entries[0]  # RESP3 nesting
            for entry_id, fields in entries:
                try:
                    message = json.loads(fields[b"data"])
                except (KeyError, ValueError):
                    message = {}
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.setdefault(sid, []).append((eid, message))
        return out

    def consumed(self, sid: str, *entry_ids: str) -> None:
        self.redis.xdel(self.ctl_key(sid), *entry_ids)

    def trim(self, sid: str) -> None:
        self.redis.xtrim(self.keys.frames(sid), maxlen=KEEP_ENTRIES, approximate=True)

    def expire(self, sid: str, seconds: int) -> None:
        """A detached or stopped session's keys expire (unless ``attach`` persists them); the
        view key stays until then, so its viewer reads the end of the stream undisturbed."""
        self.queue.expire_job(sid, seconds)
        for key in (self.view_key(sid), self.ctl_key(sid)):
            self.redis.expire(key, seconds)



# --- per-session state in a worker --------------------------------------------------------


@dataclass(eq=False)
class LiveState:
    """What a worker keeps about one running session besides its ActiveJob."""

    base: int  # frame index of fragment 0
    run_start: int  # frame index this run (or its viewer, after a takeover) started at
    cursor: str = "0-0"  # control stream position
    paused: bool = False
    acked: int = -1
    frames_since_trim: int = 0
    ending: str | None = None  # "detach" or "stop", once decided
    forks: list[str] = field(default_factory=list)

    def ready(self, frame_index: int, window: int) -> bool:
        """May the next frame be made now (not paused, within the viewer's window)?"""
        delivered = max(self.acked + 1, self.run_start)
        return not self.paused and frame_index - delivered < window


def new_encoder(width: int, height: int, fps: int, config, stream_index: int) -> LiveEncoder:
    """An encoder whose first frame (stream index ``stream_index``) is a cut (IDR)."""
    return LiveEncoder(width, height, fps, qp=config.qp,
                       keyframe_interval=config.keyframe_interval, start_index=stream_index,
                       cut=True)


def fork_job(parent: SessionJob, prompt: str, frame: int) -> SessionJob:
    return SessionJob(id=new_session_id(), prompt=prompt, seed=parent.seed, size=parent.size,
                      model=parent.model, base=frame, forked_from=parent.id)


def is_session(lease: Lease) -> bool:
    return lease.job.get("kind") == "session"
