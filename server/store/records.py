"""Job records: read, update, list in pages, delete, expire; the content index.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from .base import StoreBase
from .entries import JOB_KINDS, JOB_STATUSES, JobPage, decode_record, dumps, flatten, text
from .errors import JobNotFound, redis_errors
from .keys import check_id


class RecordsMixin(StoreBase):
    # --- job records --------------------------------------------------------------------

    @redis_errors
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        check_id(job_id, "job id")
        return decode_record(self.redis.hgetall(self.keys.job(job_id)))

    @redis_errors
    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job's record (JSON values); JobNotFound if there is none."""
        check_id(job_id, "job id")
        if "id" in fields:
            raise ValueError("a job's id cannot change")
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise ValueError(f"status must be one of {JOB_STATUSES}, got {fields['status']!r}")
        if "progress" in fields and not 0 <= fields["progress"] <= 100:
            raise ValueError(f"progress must be in 0..100, got {fields['progress']}")
        if fields and not self._script("update", [self.keys.job(job_id)], flatten(fields)):
            raise JobNotFound(job_id)

    @redis_errors
    def list_jobs(self, after: str | None = None, limit: int = 20,
                  order: Literal["asc", "desc"] = "desc", kind: str | None = None,
                  owner: str = "*") -> JobPage:
        """A page of job records in submission order, after the job ``after`` if given:
        every job, or with ``kind`` the jobs of that kind of ``owner`` (``*``: anyone's),
        read from their own index (JobNotFound when ``after`` is not among them)."""
        if not 1 <= limit <= 100:
            raise ValueError(f"limit must be in 1..100, got {limit}")
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        self._prune_expired()
        if kind is not None and kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {kind!r}")
        if owner != "*":
            check_id(owner, "owner")
        index = self.keys.index if kind is None else self.keys.listing(owner, kind)
        bound = "-inf" if order == "asc" else "+inf"
        if after is not None:
            score = self.redis.zscore(index, check_id(after, "job id"))
            if score is None:
                raise JobNotFound(after)
            bound = f"({int(score)}"  # submission numbers are unique: exclusive is exact
        jobs, missing = [], []
        while len(jobs) <= limit:
            want = limit + 1 - len(jobs)  # one more than needed tells has_more
            rows = self._index_page(index, bound, want, order)
            records = self._records([text(job_id) for job_id, _ in rows])
            for (job_id, _), record in zip(rows, records, strict=True):
                if record:
                    jobs.append(record)
                else:
                    missing.append(job_id)
            if len(rows) < want:
                break
            bound = f"({int(rows[-1][1])}"
        if missing:  # expired or half-deleted; keep the index tidy
            self.redis.zrem(index, *missing)
        return JobPage(jobs[:limit], has_more=len(jobs) > limit)

    def _index_page(self, index: str, bound: str, count: int, order: str
                    ) -> list[tuple[bytes, float]]:
        if order == "asc":
            return self.redis.zrangebyscore(index, bound, "+inf", start=0, num=count,
                                            withscores=True)
        return self.redis.zrevrangebyscore(index, bound, "-inf", start=0, num=count,
                                           withscores=True)

    def _records(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [decode_record(raw) for raw in pipe.execute()] if job_ids else []

    def _prune_expired(self, batch: int = 100) -> None:
        """Drop index entries of jobs whose keys expired (sorted sets cannot expire)."""
        due = self.redis.zrangebyscore(self.keys.expiring, "-inf", time.time(), start=0,
                                       num=batch)
        if not due:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in due:
            pipe.exists(self.keys.job(text(job_id)))
        gone = [job_id for job_id, exists in zip(due, pipe.execute(), strict=True)
                if not exists]
        if gone:
            listed = self.redis.hmget(self.keys.listed, gone)
            pipe.zrem(self.keys.index, *gone)
            pipe.zrem(self.keys.expiring, *gone)
            for job_id, where in zip(gone, listed, strict=True):
                self._unlist(pipe, job_id, where)
            pipe.execute()

    def _unlist(self, pipe, job_id, where: bytes | str | None) -> None:
        """Take a job out of its listings (``where``: its ``owner:kind``)."""
        if where:
            owner, _, kind = text(where).partition(":")
            pipe.zrem(self.keys.listing(owner, kind), job_id)
            pipe.zrem(self.keys.listing("*", kind), job_id)
        pipe.hdel(self.keys.listed, job_id)

    @redis_errors
    def migrate_listings(self, batch: int = 500) -> int:
        """Put jobs submitted before per-owner listings existed into them (their owner:
        the record's, ``local`` when it has none); returns how many. Idempotent; the
        roles run it at start, and after one complete pass it only reads a flag (every
        job submitted since is listed by ``submit`` itself)."""
        if self.redis.exists(self.keys.listings_migrated):
            return 0
        moved, cursor = 0, 0
        while True:
            cursor, rows = self.redis.zscan(self.keys.index, cursor, count=batch)
            ids = [text(job_id) for job_id, _ in rows]
            if ids:
                pipe = self.redis.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hmget(self.keys.job(job_id), ["owner", "kind"])
                fields = pipe.execute()
                known = self.redis.hmget(self.keys.listed, ids)
                pipe = self.redis.pipeline(transaction=False)
                for (job_id, score), (owner, kind), where in zip(rows, fields, known,
                                                                 strict=True):
                    if where is not None or kind is None:  # listed, or the record is gone
                        continue
                    owner = json.loads(owner) if owner else "local"
                    kind = json.loads(kind)
                    pipe.zadd(self.keys.listing(owner, kind), {job_id: score}, nx=True)
                    pipe.zadd(self.keys.listing("*", kind), {job_id: score}, nx=True)
                    pipe.hset(self.keys.listed, text(job_id), f"{owner}:{kind}")
                    moved += 1
                pipe.execute()
            if int(cursor) == 0:
                self.redis.set(self.keys.listings_migrated, 1)
                return moved

    @redis_errors
    def delete_job(self, job_id: str) -> bool:
        """Remove a job's record, frames, snapshot and flags; False if it did not exist.

        A queued entry stays in the stream; ``take`` acks it away. A running job's worker
        sees ``is_cancelled`` and gets JobNotFound on its next write.
        """
        check_id(job_id, "job id")
        where = self.redis.hget(self.keys.listed, job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id))
        pipe.delete(*self.keys.of_job(job_id)[1:])
        pipe.zrem(self.keys.index, job_id)
        pipe.zrem(self.keys.expiring, job_id)
        self._unlist(pipe, job_id, where)
        return bool(pipe.execute()[0])

    @redis_errors
    def index_content(self, job_id: str, sha256: str, seconds: int, owner: str = "local"
                      ) -> None:
        """Remember for ``seconds`` that the file with this hash is job ``job_id``'s video
        (a client may send the file back to name the video, see ``find_by_content``)."""
        check_id(job_id, "job id")
        self.redis.set(self.keys.content(check_id(owner, "owner"), sha256), job_id,
                       ex=int(seconds))

    @redis_errors
    def find_by_content(self, sha256: str, owner: str = "local") -> str | None:
        """The job whose finished video file has this SHA-256, if it is still known."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        job_id = self.redis.get(self.keys.content(check_id(owner, "owner"), sha256))
        return None if job_id is None else text(job_id)

    @staticmethod
    def expiry_args(job_id: str, seconds: int, name: str = "seconds") -> list:
        """The Lua ``expire_job`` arguments (scripts.EXPIRE_JOB): id, seconds, deadline,
        ``expires_at``; ``name`` is what an error calls ``seconds``."""
        check_id(job_id, "job id")
        if seconds < 1:
            raise ValueError(f"{name} must be >= 1, got {seconds}")
        deadline = time.time() + seconds
        return [job_id, int(seconds), deadline, dumps(int(deadline))]

    @redis_errors
    def expire_job(self, job_id: str, seconds: int) -> bool:
        """Let all of a job's keys expire in ``seconds`` (also sets ``expires_at``)."""
        args = self.expiry_args(job_id, seconds)
        keys = self.keys.of_job(job_id)
        return bool(self._script("expire", [keys[0], self.keys.expiring, *keys[1:]], args))
