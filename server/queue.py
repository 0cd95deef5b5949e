"""Redis storage for the server: the job queue, job records, frame streams and snapshots.

The API and the GPU workers talk to Redis only through :class:`JobQueue`. Every key
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
=============================  ===========  ===============================================

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

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

GROUP = "workers"
JOB_KINDS = ("video", "session")
JOB_STATUSES = ("queued", "in_progress", "completed", "failed")
FINAL_STATUSES = ("completed", "failed")
# Record fields the queue owns; a submitted job may not set them.
RESERVED_FIELDS = frozenset({"status", "progress", "created_at", "completed_at", "error",
                             "expires_at"})

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENTRY_ID_RE = re.compile(r"^\d+(-\d+)?$")
_MAX_SEQ = 2**64 - 1

P = ParamSpec("P")
R = TypeVar("R")


class QueueError(Exception):
    """Base class of this module's errors."""


class QueueUnavailable(QueueError):
    """Redis cannot be reached (connection refused, timeout, still loading)."""


class JobNotFound(QueueError, LookupError):
    """No job with this id (never submitted, deleted or expired)."""


class JobExists(QueueError, ValueError):
    """A job with this id was already submitted."""


class FragmentOrderError(QueueError, ValueError):
    """A fragment index that skips ahead; ``expected`` is the index that may come next."""

    def __init__(self, job_id: str, index: int, expected: int):
        super().__init__(f"job {job_id}: fragment {index} out of order, expected {expected}")
        self.expected = expected


class StreamClosed(QueueError):
    """The job's frame stream already has its end entry."""


class InitConflict(QueueError, ValueError):
    """A different init segment was already stored for this job."""


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn redis-py's connection errors and timeouts into QueueUnavailable."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueUnavailable(f"Redis unavailable: {exc}") from exc

    return wrapper


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: must match {_ID_RE.pattern}")
    return value


def new_job_id(kind: str = "video") -> str:
    return f"{kind}_{secrets.token_hex(12)}"


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _flatten(mapping: dict[str, Any]) -> list[str]:
    return [item for key, value in mapping.items() for item in (key, _dumps(value))]


# --- dataclasses ------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The Redis key names of one prefix."""

    prefix: str

    @property
    def queue(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:jobs:seq"

    @property
    def index(self) -> str:
        return f"{self.prefix}:jobs:index"

    @property
    def expiring(self) -> str:
        return f"{self.prefix}:jobs:expiring"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def frames(self, job_id: str) -> str:
        return f"{self.prefix}:frames:{job_id}"

    def meta(self, job_id: str) -> str:
        return f"{self.prefix}:frames:{job_id}:meta"

    def snapshot(self, job_id: str) -> str:
        return f"{self.prefix}:snap:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def of_job(self, job_id: str) -> list[str]:
        """Every key that belongs to one job, its record first."""
        return [self.job(job_id), self.frames(job_id), self.meta(job_id),
                self.snapshot(job_id), self.cancel(job_id)]


@dataclass(frozen=True)
class Lease:
    """A job handed to one consumer; end it with ``ack`` or ``release``."""

    job: dict[str, Any]
    entry_id: str
    consumer: str

    @property
    def job_id(self) -> str:
        return self.job["id"]


@dataclass(frozen=True)
class InitSegment:
    data: bytes
    mime: str


@dataclass(frozen=True)
class KeyframeRef:
    """The newest keyframe fragment of a job's frame stream."""

    entry_id: str
    index: int

    @property
    def cursor(self) -> str:
        """The ``after`` for ``read_fragments`` whose first entry is this keyframe."""
        ms, seq = (int(part) for part in self.entry_id.split("-"))
        return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{_MAX_SEQ}"


@dataclass(frozen=True)
class InitEntry:
    entry_id: str
    data: bytes
    mime: str


@dataclass(frozen=True)
class FragmentEntry:
    entry_id: str
    index: int
    data: bytes
    keyframe: bool


@dataclass(frozen=True)
class EventEntry:
    entry_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class EndEntry:
    """The last entry of a frame stream: the job's final status."""

    entry_id: str
    status: str
    error: Any = None


StreamEntry = InitEntry | FragmentEntry | EventEntry | EndEntry


@dataclass(frozen=True)
class JobPage:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False

    @property
    def first_id(self) -> str | None:
        return self.jobs[0]["id"] if self.jobs else None

    @property
    def last_id(self) -> str | None:
        return self.jobs[-1]["id"] if self.jobs else None


class Snapshot(NamedTuple):
    data: bytes
    frame_index: int


# --- Lua scripts ------------------------------------------------------------------------
# Each runs atomically in Redis. In every per-job script KEYS[1] is the job record.

_INHERIT_TTL = """
local function inherit_ttl(key)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: record, index, seq, queue. ARGV: id, job JSON, record field/value pairs.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
return redis.call('XADD', KEYS[4], '*', 'job', ARGV[2])
"""

# Per-owner slots (limits on concurrent work). KEYS: the owner's sorted set of job ids
# (score: when claimed, 0 once submitted). ARGV: job key prefix, limit, job id, now (s),
# grace (s), score to write (now, or 0 for a job already submitted). A job counts while
# queued or running (a session while queued or live, and not failed); one claimed but not
# submitted yet (no record) counts for ``grace`` seconds.
# It reads job records it is not given as KEYS: fine on one Redis, not on a Cluster.
_CLAIM_SLOT = """
local active, have = 0, false
local now, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
for i, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do
  if i % 2 == 1 then
    local f = redis.call('HMGET', ARGV[1] .. id, 'kind', 'status', 'state')
    local busy
    if not f[1] then
      local claimed = tonumber(redis.call('ZSCORE', KEYS[1], id))
      busy = claimed > 0 and now - claimed < grace
    elseif f[2] == '"completed"' or f[2] == '"failed"' then
      busy = false
    elseif f[1] == '"session"' then
      busy = f[3] == '"queued"' or f[3] == '"live"'
    else
      busy = f[2] == '"queued"' or f[2] == '"in_progress"'
    end
    if not busy then redis.call('ZREM', KEYS[1], id)
    elseif id ~= ARGV[3] then active = active + 1 end
  end
end
if active >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[6]), ARGV[3])
redis.call('EXPIRE', KEYS[1], 604800)
return 1
"""

# Queue scripts. KEYS: queue. ARGV: group, consumer, entry id(s).
_OWNED = """
local function owned(id)
  return #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 1
end
"""

_HEARTBEAT = _OWNED + """
local held = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  -- XCLAIM with min-idle 0 to the owner resets the idle time; JUSTID keeps the
  -- delivery count. It returns nothing for an entry deleted from the stream.
  if owned(id) and #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID') == 1 then
    held[#held + 1] = id
  end
end
return held
"""

_ACK = _OWNED + """
if not owned(ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = _OWNED + """
if not owned(ARGV[3]) then return false end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #entry == 0 then return false end
return redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
"""

# KEYS: record. ARGV: field/value pairs.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: record, cancel flag.
_CANCEL = _INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1')
inherit_ttl(KEYS[2])
return 1
"""

# KEYS: record, expiring, the job's other keys. ARGV: id, seconds, deadline, expires_at.
_EXPIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 3, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: record, snapshot. ARGV: data, frame index. An older frame index never overwrites a
# newer one: a stalled worker that lost its lease cannot roll the session back.
_SAVE_SNAPSHOT = _INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local old = tonumber(redis.call('HGET', KEYS[2], 'frame') or '-1')
if tonumber(ARGV[2]) < old then return 0 end
redis.call('HSET', KEYS[2], 'data', ARGV[1], 'frame', ARGV[2])
inherit_ttl(KEYS[2])
return 1
"""

# Frame-stream scripts. KEYS: record, meta, frames. They return {status, value}.
_OPEN_STREAM = _INHERIT_TTL + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', ''} end
if redis.call('HEXISTS', KEYS[2], 'ended') == 1 then return {'ended', ''} end
local function add(...)
  local id = redis.call('XADD', KEYS[3], '*', ...)
  inherit_ttl(KEYS[2])
  inherit_ttl(KEYS[3])
  return id
end
"""

# ARGV: data, mime.
_SET_INIT = _OPEN_STREAM + """
local old = redis.call('HMGET', KEYS[2], 'init', 'mime')
if old[1] then
  if old[1] == ARGV[1] and old[2] == ARGV[2] then return {'dup', ''} end
  return {'conflict', ''}
end
redis.call('HSET', KEYS[2], 'init', ARGV[1], 'mime', ARGV[2])
return {'ok', add('type', 'init', 'mime', ARGV[2], 'data', ARGV[1])}
"""

# ARGV: index, keyframe ('1' or '0'), data.
_APPEND = _OPEN_STREAM + """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '-1')
local index = tonumber(ARGV[1])
if index <= last then return {'dup', tostring(last)} end
if index ~= last + 1 then return {'gap', tostring(last)} end
redis.call('HSET', KEYS[2], 'last', ARGV[1])
local id = add('type', 'fragment', 'index', ARGV[1], 'keyframe', ARGV[2], 'data', ARGV[3])
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'kf_entry', id, 'kf_index', ARGV[1]) end
return {'ok', id}
"""

# ARGV: event JSON.
_EVENT = _OPEN_STREAM + """
return {'ok', add('type', 'event', 'data', ARGV[1])}
"""

# ARGV: end JSON, record field/value pairs.
_FINISH = _OPEN_STREAM + """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HSET', KEYS[2], 'ended', '1')
return {'ok', add('type', 'end', 'data', ARGV[1])}
"""


# --- the queue --------------------------------------------------------------------------


class JobQueue:
    """Jobs, job records, frame streams and snapshots in one Redis, under one prefix.

    ``redis_client`` must return bytes (``decode_responses=False``): fragments are binary.
    Thread-safe as far as the client is (redis-py's is).
    """

    def __init__(self, redis_client: redis.Redis, prefix: str = "pomstream",
                 claim_idle_ms: int = 30_000):
        kwargs = redis_client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError("JobQueue needs a client with decode_responses=False")
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"invalid prefix {prefix!r}")
        if claim_idle_ms < 1:
            raise ValueError(f"claim_idle_ms must be positive, got {claim_idle_ms}")
        self.redis = redis_client
        self.keys = Keys(prefix)
        self.claim_idle_ms = claim_idle_ms
        self._socket_timeout: float | None = kwargs.get("socket_timeout")
        self._claim_cursor = "0-0"
        scripts = {"submit": _SUBMIT, "heartbeat": _HEARTBEAT, "ack": _ACK,
                   "release": _RELEASE, "update": _UPDATE, "cancel": _CANCEL,
                   "expire": _EXPIRE, "save_snapshot": _SAVE_SNAPSHOT, "set_init": _SET_INIT,
                   "append": _APPEND, "event": _EVENT, "finish": _FINISH,
                   "claim_slot": _CLAIM_SLOT}
        # register_script sends nothing yet; each call uses EVALSHA and loads the script
        # again when Redis answers NOSCRIPT (e.g. after a restart).
        self._scripts = {name: redis_client.register_script(src) for name, src in scripts.items()}

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "pomstream", claim_idle_ms: int = 30_000,
                 socket_timeout: float = 30.0, retries: int = 2, **kwargs: Any) -> JobQueue:
        """A queue on a new client: bounded timeouts, a short retry (redis-py's default of
        ten retries with backoff would hide an outage for a long time)."""
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            health_check_interval=30, **kwargs)
        return cls(client, prefix=prefix, claim_idle_ms=claim_idle_ms)

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker should call ``heartbeat``: well within ``claim_idle_ms``."""
        return self.claim_idle_ms / 3000

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=list(keys), args=list(args))

    def _check_block(self, block_ms: int | None) -> None:
        if block_ms is not None and block_ms < 0:
            raise ValueError(f"block_ms must be >= 0 or None, got {block_ms}")
        # A blocking read longer than the socket timeout would fail as a timeout.
        if block_ms and self._socket_timeout and block_ms >= self._socket_timeout * 1000:
            raise ValueError(f"block_ms={block_ms} must be shorter than the client's "
                             f"socket_timeout ({self._socket_timeout} s)")

    # --- queue --------------------------------------------------------------------------

    @_guarded
    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (safe to call any time)."""
        try:
            # From id 0, not $: jobs submitted before the first worker are delivered too.
            self.redis.xgroup_create(self.keys.queue, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _with_group(self, call: Callable[[], R]) -> R:
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        self.ensure_group()
        return call()

    @_guarded
    def submit(self, job: dict[str, Any]) -> str:
        """Queue a job and create its record; returns its id (made up when absent)."""
        payload = dict(job)
        kind = payload.setdefault("kind", "video")
        if kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {kind!r}")
        job_id = check_id(payload.setdefault("id", new_job_id(kind)), "job id")
        if clash := RESERVED_FIELDS & payload.keys():
            raise ValueError(f"job may not set {sorted(clash)}")
        record = {**payload, "status": "queued", "progress": 0,
                  "created_at": int(time.time()), "completed_at": None, "error": None}
        keys = self.keys
        added = self._script("submit", [keys.job(job_id), keys.index, keys.seq, keys.queue],
                             [job_id, _dumps(payload), *_flatten(record)])
        if added is None:
            raise JobExists(f"job {job_id} already exists")
        return job_id

    @_guarded
    def take(self, consumer: str, count: int = 1, block_ms: int | None = 1000) -> list[Lease]:
        """Up to ``count`` jobs for ``consumer``: stale ones first, then new ones.

        Blocks up to ``block_ms`` for new jobs when there was nothing stale (None or 0: do
        not block). Jobs deleted while queued are acked away and not returned.
        """
        check_id(consumer, "consumer")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._check_block(block_ms)
        leases = self._reclaim(consumer, count)
        if len(leases) < count:
            block = None if leases else block_ms
            leases += self._read_new(consumer, count - len(leases), block)
        return self._drop_deleted(leases)

    def _reclaim(self, consumer: str, count: int) -> list[Lease]:
        reply = self._with_group(lambda: self.redis.xautoclaim(
            self.keys.queue, GROUP, consumer, self.claim_idle_ms, self._claim_cursor,
            count=count))
        # Continue the scan where it stopped; it wraps to 0-0 at the end of the PEL.
        self._claim_cursor = _str(reply[0])
        # Redis 7 lists entries deleted from the stream separately (and drops them from the
        # PEL); 6.2 returns them with no fields. Ack them either way: no job to run.
        deleted = [_str(i) for i in (reply[2] if len(reply) > 2 else [])]
        leases = []
        for entry_id, fields in reply[1]:
            if fields:
                leases.append(self._lease(entry_id, fields, consumer))
            else:
                deleted.append(_str(entry_id))
        if deleted:
            self.redis.xack(self.keys.queue, GROUP, *deleted)
        return leases

    def _read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Lease]:
        reply = self._with_group(lambda: self.redis.xreadgroup(
            GROUP, consumer, {self.keys.queue: ">"}, count=count, block=block_ms or None))
        return [self._lease(entry_id, fields, consumer)
                for entry_id, fields in _stream_entries(reply)]

    @staticmethod
    def _lease(entry_id: bytes | str, fields: dict[bytes, bytes], consumer: str) -> Lease:
        return Lease(json.loads(fields[b"job"]), _str(entry_id), consumer)

    def _drop_deleted(self, leases: list[Lease]) -> list[Lease]:
        if not leases:
            return leases
        pipe = self.redis.pipeline(transaction=False)
        for lease in leases:
            pipe.exists(self.keys.job(lease.job_id))
        kept = []
        for lease, exists in zip(leases, pipe.execute(), strict=True):
            if exists:
                kept.append(lease)
            else:
                self.ack(lease)
        return kept

    @_guarded
    def heartbeat(self, leases: Iterable[Lease]) -> list[Lease]:
        """Reset the idle time of leases still held; returns the ones lost (stop them)."""
        by_consumer: dict[str, list[Lease]] = {}
        for lease in leases:
            by_consumer.setdefault(lease.consumer, []).append(lease)
        lost = []
        for consumer, group in by_consumer.items():
            reply = self._owned_call("heartbeat", consumer, [le.entry_id for le in group])
            held = {_str(entry_id) for entry_id in reply or []}
            lost += [lease for lease in group if lease.entry_id not in held]
        return lost

    def _owned_call(self, script: str, consumer: str, entry_ids: list[str]) -> Any:
        """Run a queue script that checks ownership; None when the group is gone (a Redis
        restart without persistence), as then nothing is held."""
        try:
            return self._script(script, [self.keys.queue], [GROUP, consumer, *entry_ids])
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return None

    @_guarded
    def ack(self, lease: Lease) -> bool:
        """The job is finished: remove it from the queue. False if the lease was lost."""
        return bool(self._owned_call("ack", lease.consumer, [lease.entry_id]))

    @_guarded
    def release(self, lease: Lease) -> bool:
        """Give a job back unfinished (graceful shutdown): requeued at once, as a new entry.

        False if the lease was already lost (someone else runs the job now).
        """
        return self._owned_call("release", lease.consumer, [lease.entry_id]) is not None

    @_guarded
    def cancel(self, job_id: str) -> bool:
        """Ask the job's worker to stop; False if there is no such job."""
        check_id(job_id, "job id")
        return bool(self._script("cancel", [self.keys.job(job_id), self.keys.cancel(job_id)], []))

    @_guarded
    def is_cancelled(self, job_id: str) -> bool:
        """True once the job is cancelled or no longer exists: either way, stop."""
        check_id(job_id, "job id")
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.cancel(job_id))
        pipe.exists(self.keys.job(job_id))
        cancelled, exists = pipe.execute()
        return bool(cancelled) or not exists

    # --- job records --------------------------------------------------------------------

    @_guarded
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        check_id(job_id, "job id")
        return _decode_record(self.redis.hgetall(self.keys.job(job_id)))

    @_guarded
    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job's record (JSON values); JobNotFound if there is none."""
        check_id(job_id, "job id")
        if "id" in fields:
            raise ValueError("a job's id cannot change")
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise ValueError(f"status must be one of {JOB_STATUSES}, got {fields['status']!r}")
        if "progress" in fields and not 0 <= fields["progress"] <= 100:
            raise ValueError(f"progress must be in 0..100, got {fields['progress']}")
        if fields and not self._script("update", [self.keys.job(job_id)], _flatten(fields)):
            raise JobNotFound(job_id)

    @_guarded
    def list_jobs(self, after: str | None = None, limit: int = 20,
                  order: Literal["asc", "desc"] = "desc") -> JobPage:
        """A page of job records in submission order, after the job ``after`` if given."""
        if not 1 <= limit <= 100:
            raise ValueError(f"limit must be in 1..100, got {limit}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        self._prune_expired()
        bound = "-inf" if order == "asc" else "+inf"
        if after is not None:
            score = self.redis.zscore(self.keys.index, check_id(after, "job id"))
            if score is None:
                raise JobNotFound(after)
            bound = f"({int(score)}"  # submission numbers are unique: exclusive is exact
        jobs, missing = [], []
        while len(jobs) <= limit:
            want = limit + 1 - len(jobs)  # one more than needed tells has_more
            rows = self._index_page(bound, want, order)
            records = self._records([_str(job_id) for job_id, _ in rows])
            for (job_id, _), record in zip(rows, records, strict=True):
                if record:
                    jobs.append(record)
                else:
                    missing.append(job_id)
            if len(rows) < want:
                break
            bound = f"({int(rows[-1][1])}"
        if missing:  # expired or half-deleted; keep the index tidy
            self.redis.zrem(self.keys.index, *missing)
        return JobPage(jobs[:limit], has_more=len(jobs) > limit)

    def _index_page(self, bound: str, count: int, order: str) -> list[tuple[bytes, float]]:
        if order == "asc":
            return self.redis.zrangebyscore(self.keys.index, bound, "+inf", start=0, num=count,
                                            withscores=True)
        return self.redis.zrevrangebyscore(self.keys.index, bound, "-inf", start=0, num=count,
                                           withscores=True)

    def _records(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_decode_record(raw) for raw in pipe.execute()] if job_ids else []

    def _prune_expired(self, batch: int = 100) -> None:
        """Drop index entries of jobs whose keys expired (sorted sets cannot expire)."""
        due = self.redis.zrangebyscore(self.keys.expiring, "-inf", time.time(), start=0,
                                       num=batch)
        if not due:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in due:
            pipe.exists(self.keys.job(_str(job_id)))
        gone = [job_id for job_id, exists in zip(due, pipe.execute(), strict=True)
                if not exists]
        if gone:
            pipe.zrem(self.keys.index, *gone)
            pipe.zrem(self.keys.expiring, *gone)
            pipe.execute()

    @_guarded
    def delete_job(self, job_id: str) -> bool:
        """Remove a job's record, frames, snapshot and flags; False if it did not exist.

        A queued entry stays in the stream; ``take`` acks it away. A running job's worker
        sees ``is_cancelled`` and gets JobNotFound on its next write.
        """
        check_id(job_id, "job id")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id))
        pipe.delete(*self.keys.of_job(job_id)[1:])
        pipe.zrem(self.keys.index, job_id)
        pipe.zrem(self.keys.expiring, job_id)
        return bool(pipe.execute()[0])

    # --- per-owner limits (an owner: an API key's hash, see server.api) ---------------

    @_guarded
    def claim_slot(self, owner: str, job_id: str, limit: int, grace_s: int = 30,
                   submitted: bool = False) -> bool:
        """Count ``job_id`` among ``owner``'s running work unless ``limit`` other jobs
        or sessions of theirs are queued or running; False when they are. A job not
        ``submitted`` yet counts for ``grace_s`` until ``confirm_slot``."""
        check_id(owner, "owner")
        check_id(job_id, "job id")
        now = int(time.time())
        return bool(self._script("claim_slot", [f"{self.keys.prefix}:owner:{owner}"],
                                 [f"{self.keys.prefix}:job:", int(limit), job_id, now,
                                  int(grace_s), 0 if submitted else now]))

    @_guarded
    def confirm_slot(self, owner: str, job_id: str) -> None:
        """The job of a claimed slot is submitted: from now on its record decides."""
        self.redis.zadd(f"{self.keys.prefix}:owner:{check_id(owner, 'owner')}", {job_id: 0},
                        xx=True)

    @_guarded
    def release_slot(self, owner: str, job_id: str) -> None:
        self.redis.zrem(f"{self.keys.prefix}:owner:{check_id(owner, 'owner')}", job_id)

    @_guarded
    def hit_rate(self, owner: str, limit: int, window_s: int = 60) -> int:
        """Count a request of ``owner`` in the current window: 0 if it is within
        ``limit`` requests per ``window_s``, else the seconds until the window ends."""
        check_id(owner, "owner")
        now = time.time()
        window = int(now // window_s)
        key = f"{self.keys.prefix}:rate:{owner}:{window}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window_s + 1)
        count = pipe.execute()[0]
        return 0 if count <= limit else max(1, math.ceil((window + 1) * window_s - now))

    @_guarded
    def index_content(self, job_id: str, sha256: str, seconds: int) -> None:
        """Remember for ``seconds`` that the file with this hash is job ``job_id``'s video
        (a client may send the file back to name the video, see ``find_by_content``)."""
        check_id(job_id, "job id")
        self.redis.set(f"{self.keys.prefix}:content:{sha256}", job_id, ex=int(seconds))

    @_guarded
    def find_by_content(self, sha256: str) -> str | None:
        """The job whose finished video file has this SHA-256, if it is still known."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        job_id = self.redis.get(f"{self.keys.prefix}:content:{sha256}")
        return None if job_id is None else _str(job_id)

    @_guarded
    def expire_job(self, job_id: str, seconds: int) -> bool:
        """Let all of a job's keys expire in ``seconds`` (also sets ``expires_at``)."""
        check_id(job_id, "job id")
        if seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {seconds}")
        deadline = time.time() + seconds
        keys = self.keys.of_job(job_id)
        return bool(self._script("expire", [keys[0], self.keys.expiring, *keys[1:]],
                                 [job_id, int(seconds), deadline, _dumps(int(deadline))]))

    # --- snapshots ----------------------------------------------------------------------

    @_guarded
    def save_snapshot(self, job_id: str, data: bytes, frame_index: int) -> bool:
        """Store a snapshot and its frame index together; False (kept the stored one) when
        the stored snapshot is of a later frame. JobNotFound if the job is gone."""
        check_id(job_id, "job id")
        saved = self._script("save_snapshot",
                             [self.keys.job(job_id), self.keys.snapshot(job_id)],
                             [bytes(data), int(frame_index)])
        if saved < 0:
            raise JobNotFound(job_id)
        return bool(saved)

    @_guarded
    def load_snapshot(self, job_id: str) -> Snapshot | None:
        check_id(job_id, "job id")
        data, frame = self.redis.hmget(self.keys.snapshot(job_id), ["data", "frame"])
        return None if data is None else Snapshot(data, int(frame))

    # --- frame streams ------------------------------------------------------------------

    def _stream_call(self, script: str, job_id: str, args: Sequence[Any]) -> tuple[str, str]:
        check_id(job_id, "job id")
        keys = [self.keys.job(job_id), self.keys.meta(job_id), self.keys.frames(job_id)]
        status, value = (_str(part) for part in self._script(script, keys, args))
        if status == "gone":
            raise JobNotFound(job_id)
        if status == "ended":
            raise StreamClosed(f"job {job_id}: frame stream already ended")
        return status, value

    @_guarded
    def set_init(self, job_id: str, init_segment: bytes, mime: str) -> bool:
        """Store the init segment (first entry of the stream); False if already stored.

        Storing a different one raises InitConflict: fragments already sent need the first.
        """
        status, _ = self._stream_call("set_init", job_id, [bytes(init_segment), mime])
        if status == "conflict":
            raise InitConflict(f"job {job_id}: another init segment is already stored")
        return status == "ok"

    @_guarded
    def append_fragment(self, job_id: str, index: int, data: bytes, keyframe: bool) -> bool:
        """Append frame ``index``; False if it is already there (a regenerated frame).

        Raises FragmentOrderError if ``index`` skips ahead of the next expected one.
        """
        if index < 0:
            raise ValueError(f"fragment index must be >= 0, got {index}")
        status, value = self._stream_call("append", job_id,
                                          [int(index), "1" if keyframe else "0", bytes(data)])
        if status == "gap":
            raise FragmentOrderError(job_id, index, int(value) + 1)
        return status == "ok"

    @_guarded
    def publish_event(self, job_id: str, event: dict[str, Any]) -> str:
        """Append a JSON event (e.g. progress) to the frame stream; returns its entry id."""
        return self._stream_call("event", job_id, [_dumps(event)])[1]

    @_guarded
    def finish_job(self, job_id: str, status: str, error: Any = None) -> str:
        """Mark the job completed or failed and end its frame stream, atomically.

        Returns the end entry's id; StreamClosed if the job had already finished.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        record: dict[str, Any] = {"status": status, "completed_at": int(time.time()),
                                  "error": error}
        if status == "completed":
            record["progress"] = 100
        end = _dumps({"status": status, "error": error})
        return self._stream_call("finish", job_id, [end, *_flatten(record)])[1]

    @_guarded
    def get_init(self, job_id: str) -> InitSegment | None:
        check_id(job_id, "job id")
        data, mime = self.redis.hmget(self.keys.meta(job_id), ["init", "mime"])
        return None if data is None else InitSegment(data, _str(mime))

    @_guarded
    def last_fragment_index(self, job_id: str) -> int:
        """Index of the last fragment stored, -1 if none: where a resumed worker goes on."""
        check_id(job_id, "job id")
        last = self.redis.hget(self.keys.meta(job_id), "last")
        return -1 if last is None else int(last)

    @_guarded
    def last_keyframe_entry(self, job_id: str) -> KeyframeRef | None:
        check_id(job_id, "job id")
        entry_id, index = self.redis.hmget(self.keys.meta(job_id), ["kf_entry", "kf_index"])
        return None if entry_id is None else KeyframeRef(_str(entry_id), int(index))

    @_guarded
    def is_ended(self, job_id: str) -> bool:
        check_id(job_id, "job id")
        return bool(self.redis.hexists(self.keys.meta(job_id), "ended"))

    @_guarded
    def read_fragments(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                       count: int = 100) -> list[StreamEntry]:
        """Entries of the frame stream after entry id ``after``, oldest first.

        With ``block_ms`` waits up to that long when there is nothing yet (also when the
        stream does not exist yet); returns [] on timeout. Keep reading from the last
        entry id until an EndEntry arrives.
        """
        check_id(job_id, "job id")
        if not _ENTRY_ID_RE.match(after):
            raise ValueError(f"invalid stream entry id {after!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._check_block(block_ms)
        reply = self.redis.xread({self.keys.frames(job_id): after}, count=count,
                                 block=block_ms or None)
        return [_parse_entry(_str(entry_id), fields)
                for entry_id, fields in _stream_entries(reply)]


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        return entries[0] if entries and isinstance(entries[0], list) else entries
    return reply[0][1]


def _decode_record(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    return {_str(k): json.loads(v) for k, v in raw.items()} if raw else None


def _parse_entry(entry_id: str, fields: dict[bytes, bytes]) -> StreamEntry:
    kind = fields[b"type"]
    if kind == b"fragment":
        return FragmentEntry(entry_id, int(fields[b"index"]), fields[b"data"],
                             fields[b"keyframe"] == b"1")
    if kind == b"init":
        return InitEntry(entry_id, fields[b"data"], _str(fields[b"mime"]))
    if kind == b"event":
        return EventEntry(entry_id, json.loads(fields[b"data"]))
    if kind == b"end":
        end = json.loads(fields[b"data"])
        return EndEntry(entry_id, end["status"], end.get("error"))
    raise ValueError(f"unknown frame stream entry type {kind!r}")
