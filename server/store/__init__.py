"""The store: the only code that talks to Redis (queue, records, frames, limits, sessions).

The API and the workers talk to Redis only through this package: :class:`JobQueue`
(the queue, job records, frame streams, snapshots and per-owner limits),
:class:`SessionStore` (live sessions' viewer and control keys) and
:class:`WorkerRegistry` (which workers are alive). Every key
starts with a prefix (``pomstream`` by default) so several deployments or test runs can
share one Redis.

Keys
----
=============================  ===========  ===============================================
``{p}:jobs``                   stream       the queue; consumer group ``workers``
``{p}:jobs:seq``               string       submission counter (the order of ``list_jobs``)
``{p}:jobs:index``             sorted set   job id -> submission number
``{p}:jobs:expiring``          sorted set   job id -> unix time its keys expire
``{p}:job:{id}``               hash         the job record, every value JSON-encoded
``{p}:frames:{id}``            stream       what viewers replay: init, fragments, events, end
``{p}:frames:{id}:meta``       hash         init segment, last index, last keyframe, ended
``{p}:snap:{id}``              hash         the generator's snapshot and its frame index
``{p}:cancel:{id}``            string       set when the job is cancelled
``{p}:view:{id}``              hash         a live session's viewer (sessions.py)
``{p}:ctl:{id}``               stream       a live session's control messages
``{p}:owner:{owner}``          sorted set   an owner's slots of running work (limits.py)
``{p}:rate:{owner}:{window}``  string       an owner's requests in one rate window
``{p}:content:{sha256}``       string       the job whose video file has this hash
``{p}:workers``                sorted set   worker id -> last heartbeat (registry.py)
``{p}:workers:capacity``       hash         worker id -> jobs it can still take (registry.py)
=============================  ===========  ===============================================

Every key is built by :class:`~.keys.Keys`; the Lua scripts are in :mod:`.scripts`.

Modules: ``base.py`` (client, prefix, scripts, ``ping``/``depth``), ``queue.py`` (the
lease lifecycle below), ``records.py`` (job records, pages, expiry, content index),
``frames.py`` (frame streams and snapshots), ``limits.py`` (slots, rates),
``sessions.py`` (live sessions), ``registry.py`` (workers), ``keys.py``, ``entries.py``,
``errors.py``, ``scripts.py``.

Ids match ``^[A-Za-z0-9_-]{1,64}$`` (no ``:``), so no id can reach into another key.

Lease lifecycle
---------------
``submit`` writes the record, the index entry and the queue entry in one Lua script, so a
job is never listed without being queued or queued without a record. ``take`` hands jobs
out as :class:`Lease` objects: first it reclaims stale ones with XAUTOCLAIM, then it reads
new ones with XREADGROUP. A taken entry sits in the group's pending list (PEL), owned by
the consumer, until the worker ends it one of two ways:

* ``ack``: the job is finished (completed or failed); XACK and XDEL, so the stream only
  ever holds queued or running jobs.
* ``release``: graceful shutdown. The entry is acked, deleted and added again as a new
  entry with the same job, in one script: nothing is lost (one atomic step) and nothing is
  duplicated (the old entry is gone), and a worker blocked in XREADGROUP wakes at once.
  The job goes to the back of the queue; its record and frames are untouched, and the next
  worker resumes from its snapshot.

A worker that dies keeps its entries in the PEL. Once an entry has been idle longer than
``claim_idle_ms``, the next ``take`` by any worker moves it over (XAUTOCLAIM), so the job
runs again: delivery is at least once. A live worker's job may run far longer than
``claim_idle_ms``, so the worker calls ``heartbeat`` every ``heartbeat_interval_s``
(a third of it): XCLAIM with min-idle 0 to the same consumer resets the idle time. Both
``heartbeat`` and ``ack`` first check in the same script that the consumer still owns the
entry, so a worker that stalled and lost its job can neither steal it back nor ack the new
owner's delivery; ``heartbeat`` returns the leases lost, and that worker must stop them.
The group is created reading from ``0``, so jobs submitted before any worker started are
delivered; acked entries are deleted, so this never replays finished jobs. If Redis loses
the group (a restart without persistence), ``take`` recreates it.

Frame streams
-------------
A job's frame stream holds, in order: one ``init`` entry (the fMP4 init segment), one
``fragment`` entry per frame, ``event`` entries (progress, anything JSON) and a final
``end`` entry written by ``finish_job``. A WebSocket handler reads from ``0-0`` and then
blocks on the last entry id it saw (``read_fragments(after=..., block_ms=...)``) until an
:class:`EndEntry` arrives. A late joiner instead takes ``get_init`` and starts at
``last_keyframe_entry(...).cursor``.

Fragments are idempotent by frame index: the meta hash keeps the last index, and the append
script adds index ``last + 1``, ignores ``index <= last`` and refuses a gap, atomically. A
worker that crashed and regenerates frames from its last snapshot (taken before the last
fragment it wrote) therefore re-appends without duplicates. After ``finish_job`` the stream
is closed. Every write to a job's keys checks that its record exists (a deleted job raises
:class:`JobNotFound`, so its worker stops instead of recreating keys) and copies the
record's TTL, so keys created after ``expire_job`` expire with the rest.

Errors
------
Redis connection errors and timeouts become :class:`QueueUnavailable` (the API answers
503); bad ids raise ``ValueError``. Blocking reads must be shorter than the client's
socket timeout; :meth:`JobQueue.from_url` builds a client with suitable timeouts and a
short retry, so an outage surfaces in seconds rather than after minutes of retries.
"""

from .entries import (
    FINAL_STATUSES,
    JOB_KINDS,
    JOB_STATUSES,
    EndEntry,
    EventEntry,
    FragmentEntry,
    InitEntry,
    InitSegment,
    JobPage,
    KeyframeRef,
    Lease,
    Snapshot,
    StreamEntry,
)
from .errors import (
    FragmentOrderError,
    InitConflict,
    JobExists,
    JobNotFound,
    QueueError,
    QueueUnavailable,
    StreamClosed,
)
from .keys import GROUP, Keys, check_id, new_job_id
from .queue import JobQueue
from .registry import WorkerRegistry
from .sessions import Attached, SessionEnded, SessionNotFound, SessionStore, ViewState

__all__ = [
    "FINAL_STATUSES", "JOB_KINDS", "JOB_STATUSES", "EndEntry", "EventEntry", "FragmentEntry",
    "InitEntry", "InitSegment", "JobPage", "KeyframeRef", "Lease", "Snapshot", "StreamEntry",
    "FragmentOrderError", "InitConflict", "JobExists", "JobNotFound", "QueueError",
    "QueueUnavailable", "StreamClosed", "GROUP", "Keys", "check_id", "new_job_id", "JobQueue",
    "WorkerRegistry", "Attached", "SessionEnded", "SessionNotFound", "SessionStore",
    "ViewState",
]
