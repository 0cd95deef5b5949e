"""Live sessions: unlimited streams steered by their viewer, run by the same workers as videos.

A live session is a job of kind ``session`` in the same queue as videos. A worker runs it in
the same batched ``generator.step`` as its videos (continuous batching), encodes it on a
lane and appends its fragments to the job's frame stream, exactly like a video, except that
it has no frame count: it runs until its viewer stops it or goes away.

Who talks to whom
-----------------
The WebSocket handler (:mod:`pomstream.server.http.live`) and the worker may be different
processes, so they only meet in Redis (all keys under the queue's prefix):

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
import time
from dataclasses import dataclass
from typing import Any

from . import scripts as lua
from .entries import dumps
from .keys import check_id
from .queue import JobQueue

KEEP_ENTRIES = 512  # entries a trimmed frame stream keeps (far more than any window)


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
    """The session keys beside a :class:`~.queue.JobQueue` (same client and prefix)."""

    def __init__(self, queue: JobQueue, viewer_timeout_s: float = 15.0):
        self.queue, self.redis, self.keys = queue, queue.redis, queue.keys
        self.viewer_timeout_s = viewer_timeout_s
        self._scripts = {name: self.redis.register_script(src) for name, src in
                         (("attach", lua.ATTACH), ("settle", lua.SETTLE), ("touch", lua.TOUCH),
                          ("leave", lua.LEAVE))}

    def view_key(self, sid: str) -> str:
        return self.keys.view(check_id(sid, "session id"))

    def ctl_key(self, sid: str) -> str:
        return self.keys.ctl(check_id(sid, "session id"))

    # -- the viewer's side ----------------------------------------------------------------

    def attach(self, sid: str, token: str, job: dict[str, Any]) -> Attached:
        k = self.keys
        keys = [k.job(sid), self.view_key(sid), self.ctl_key(sid), k.queue, k.frames(sid),
                k.meta(sid), k.snapshot(sid), k.cancel(sid)]
        status, cursor, state = (v.decode() if isinstance(v, bytes) else v for v in
                                 self._scripts["attach"](keys=keys,
                                                         args=[token, time.time(), dumps(job)]))
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
        self.redis.xadd(self.ctl_key(sid), {"data": dumps(message)}, maxlen=256, approximate=True)

    # -- the worker's side ----------------------------------------------------------------

    def settle(self, sid: str, detached_ttl_s: int | None = None) -> int:
        """live (1) with a fresh viewer, else detached (0); -1 if the session is gone.

        With ``detached_ttl_s`` a session that settles detached gets, in the same step, the
        expiry :meth:`expire` would give it."""
        keys = [self.queue.keys.job(sid), self.view_key(sid)]
        args: list = [time.time(), self.viewer_timeout_s]
        if detached_ttl_s is not None:
            keys += [self.keys.expiring, self.ctl_key(sid), *self.keys.of_job(sid)[1:]]
            args += self.queue.expiry_args(sid, detached_ttl_s, "detached_ttl_s")
        return int(self._scripts["settle"](keys=keys, args=args))

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
        prefix = self.keys.ctl("")
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
