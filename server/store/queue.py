"""The job queue: submit, take (leases), heartbeat, ack, release, cancel.

The lease lifecycle is described in the package docs (:mod:`pomstream.server.store`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from .base import StoreBase
from .entries import JOB_KINDS, RESERVED_FIELDS, Lease, dumps, flatten, stream_entries, text
from .errors import JobExists, R, redis_errors
from .frames import FramesMixin
from .keys import GROUP, check_id, new_job_id
from .limits import LimitsMixin
from .records import RecordsMixin


class JobQueue(RecordsMixin, FramesMixin, LimitsMixin, StoreBase):
    """Jobs, job records, frame streams, snapshots and limits in one Redis, under one
    prefix: the queue operations here, the rest from the mixins of this package."""

    # --- queue --------------------------------------------------------------------------

    @redis_errors
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

    @redis_errors
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
        owner = check_id(str(payload.get("owner") or "local"), "owner")
        added = self._script("submit", [keys.job(job_id), keys.index, keys.seq, keys.queue,
                                        keys.listing(owner, kind), keys.listing("*", kind),
                                        keys.listed],
                             [job_id, dumps(payload), f"{owner}:{kind}", *flatten(record)])
        if added is None:
            raise JobExists(f"job {job_id} already exists")
        return job_id

    @redis_errors
    def waiting_ahead(self, job_id: str, limit: int = 1000) -> int | None:
        """How many queued jobs no worker has taken yet come before ``job_id``; None when
        it is not waiting (taken, gone) or not among the first ``limit`` waiting."""
        try:
            groups = self.redis.xinfo_groups(self.keys.queue)
        except redis.ResponseError:  # no stream or group yet: nothing was ever taken
            groups = []
        last = next((text(g["last-delivered-id"]) for g in groups
                     if text(g["name"]) == GROUP), "0-0")
        entries = self.redis.xrange(self.keys.queue, f"({last}", "+", count=limit)
        for ahead, (_, fields) in enumerate(entries):
            if json.loads(fields[b"job"]).get("id") == job_id:
                return ahead
        return None

    @redis_errors
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
        self._claim_cursor = text(reply[0])
        # Redis 7 lists entries deleted from the stream separately (and drops them from the
        # PEL); 6.2 returns them with no fields. Ack them either way: no job to run.
        deleted = [text(i) for i in (reply[2] if len(reply) > 2 else [])]
        leases = []
        for entry_id, fields in reply[1]:
            if fields:
                leases.append(self._lease(entry_id, fields, consumer))
            else:
                deleted.append(text(entry_id))
        if deleted:
            self.redis.xack(self.keys.queue, GROUP, *deleted)
        return leases

    def _read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Lease]:
        reply = self._with_group(lambda: self.redis.xreadgroup(
            GROUP, consumer, {self.keys.queue: ">"}, count=count, block=block_ms or None))
        return [self._lease(entry_id, fields, consumer)
                for entry_id, fields in stream_entries(reply)]

    @staticmethod
    def _lease(entry_id: bytes | str, fields: dict[bytes, bytes], consumer: str) -> Lease:
        return Lease(json.loads(fields[b"job"]), text(entry_id), consumer)

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

    @redis_errors
    def heartbeat(self, leases: Iterable[Lease]) -> list[Lease]:
        """Reset the idle time of leases still held; returns the ones lost (stop them)."""
        by_consumer: dict[str, list[Lease]] = {}
        for lease in leases:
            by_consumer.setdefault(lease.consumer, []).append(lease)
        lost = []
        for consumer, group in by_consumer.items():
            reply = self._owned_call("heartbeat", consumer, [le.entry_id for le in group])
            held = {text(entry_id) for entry_id in reply or []}
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

    @redis_errors
    def ack(self, lease: Lease) -> bool:
        """The job is finished: remove it from the queue. False if the lease was lost."""
        return bool(self._owned_call("ack", lease.consumer, [lease.entry_id]))

    @redis_errors
    def release(self, lease: Lease) -> bool:
        """Give a job back unfinished (graceful shutdown): requeued at once, as a new entry.

        False if the lease was already lost (someone else runs the job now).
        """
        return self._owned_call("release", lease.consumer, [lease.entry_id]) is not None

    @redis_errors
    def cancel(self, job_id: str) -> bool:
        """Ask the job's worker to stop; False if there is no such job."""
        check_id(job_id, "job id")
        return bool(self._script("cancel", [self.keys.job(job_id), self.keys.cancel(job_id)], []))

    @redis_errors
    def is_cancelled(self, job_id: str) -> bool:
        """True once the job is cancelled or no longer exists: either way, stop."""
        check_id(job_id, "job id")
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.cancel(job_id))
        pipe.exists(self.keys.job(job_id))
        cancelled, exists = pipe.execute()
        return bool(cancelled) or not exists
