"""Frame streams (init, fragments, events, end) and snapshots of jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from .base import StoreBase
from .entries import (
    FINAL_STATUSES,
    JOB_KINDS,
    EndEntry,
    FragmentEntry,
    InitEntry,
    InitSegment,
    KeyframeRef,
    Snapshot,
    StreamEntry,
    dumps,
    flatten,
    parse_entry,
    stream_entries,
    text,
)
from .errors import FragmentOrderError, InitConflict, JobNotFound, StreamClosed, redis_errors
from .keys import ENTRY_ID_RE, check_id


class FramesMixin(StoreBase):
    # --- snapshots ----------------------------------------------------------------------

    @redis_errors
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

    @redis_errors
    def trim_snapshots(self, owner: str, max_bytes: int) -> list[str]:
        """Keep ``owner``'s stored snapshots within ``max_bytes``: drop those of its oldest
        finished jobs (a finished video keeps its state only to be extended, a stopped
        session to be forked again) until the rest fit. Running and detached jobs'
        snapshots are never dropped: they are how those resume, and they are bounded by
        the key's limit of running work; nor is the source of an extension not made yet.
        Returns the jobs whose snapshots were dropped. (It reads the key's whole listing:
        its jobs within the video TTL.)"""
        check_id(owner, "owner")
        rows = []
        for kind in JOB_KINDS:
            rows += self.redis.zrange(self.keys.listing(owner, kind), 0, -1, withscores=True)
        ids = [text(member) for member, _ in sorted(rows, key=lambda row: row[1])]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hstrlen(self.keys.snapshot(job_id), "data")
            pipe.hmget(self.keys.job(job_id), ["status", "extends"])
        replies = pipe.execute()
        sizes = replies[0::2]
        fields = [[None if v is None else json.loads(v) for v in pair] for pair in replies[1::2]]
        # the source of an extension still to be made: it starts from that snapshot
        needed = {extends for status, extends in fields
                  if extends and status not in FINAL_STATUSES}
        total, dropped = sum(sizes), []
        for job_id, size, (status, _) in zip(ids, sizes, fields, strict=True):
            if total <= max_bytes:
                break
            if size and status in FINAL_STATUSES and job_id not in needed:
                dropped.append(job_id)
                total -= size
        if dropped:
            self.redis.delete(*(self.keys.snapshot(job_id) for job_id in dropped))
        return dropped

    @redis_errors
    def drop_snapshot(self, job_id: str) -> None:
        """Forget a job's snapshot (an image's: nothing continues from it)."""
        self.redis.delete(self.keys.snapshot(check_id(job_id, "job id")))

    @redis_errors
    def load_snapshot(self, job_id: str) -> Snapshot | None:
        check_id(job_id, "job id")
        data, frame = self.redis.hmget(self.keys.snapshot(job_id), ["data", "frame"])
        return None if data is None else Snapshot(data, int(frame))

    # --- frame streams ------------------------------------------------------------------

    def _stream_call(self, script: str, job_id: str, args: Sequence[Any]) -> tuple[str, str]:
        check_id(job_id, "job id")
        keys = [self.keys.job(job_id), self.keys.meta(job_id), self.keys.frames(job_id)]
        status, value = (text(part) for part in self._script(script, keys, args))
        if status == "gone":
            raise JobNotFound(job_id)
        if status == "ended":
            raise StreamClosed(f"job {job_id}: frame stream already ended")
        return status, value

    @redis_errors
    def set_init(self, job_id: str, init_segment: bytes, mime: str) -> bool:
        """Store the init segment (first entry of the stream); False if already stored.

        Storing a different one raises InitConflict: fragments already sent need the first.
        """
        status, _ = self._stream_call("set_init", job_id, [bytes(init_segment), mime])
        if status == "conflict":
            raise InitConflict(f"job {job_id}: another init segment is already stored")
        return status == "ok"

    @redis_errors
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

    @redis_errors
    def publish_event(self, job_id: str, event: dict[str, Any]) -> str:
        """Append a JSON event (e.g. progress) to the frame stream; returns its entry id."""
        return self._stream_call("event", job_id, [dumps(event)])[1]

    @redis_errors
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
        end = dumps({"status": status, "error": error})
        return self._stream_call("finish", job_id, [end, *flatten(record)])[1]

    @redis_errors
    def get_init(self, job_id: str) -> InitSegment | None:
        check_id(job_id, "job id")
        data, mime = self.redis.hmget(self.keys.meta(job_id), ["init", "mime"])
        return None if data is None else InitSegment(data, text(mime))

    @redis_errors
    def last_fragment_index(self, job_id: str) -> int:
        """Index of the last fragment stored, -1 if none: where a resumed worker goes on."""
        check_id(job_id, "job id")
        last = self.redis.hget(self.keys.meta(job_id), "last")
        return -1 if last is None else int(last)

    @redis_errors
    def last_keyframe_entry(self, job_id: str) -> KeyframeRef | None:
        check_id(job_id, "job id")
        entry_id, index = self.redis.hmget(self.keys.meta(job_id), ["kf_entry", "kf_index"])
        return None if entry_id is None else KeyframeRef(text(entry_id), int(index))

    @redis_errors
    def is_ended(self, job_id: str) -> bool:
        check_id(job_id, "job id")
        return bool(self.redis.hexists(self.keys.meta(job_id), "ended"))

    @redis_errors
    def read_fragments(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                       count: int = 100) -> list[StreamEntry]:
        """Entries of the frame stream after entry id ``after``, oldest first.

        With ``block_ms`` waits up to that long when there is nothing yet (also when the
        stream does not exist yet); returns [] on timeout. Keep reading from the last
        entry id until an EndEntry arrives.
        """
        check_id(job_id, "job id")
        if not ENTRY_ID_RE.match(after):
            raise ValueError(f"invalid stream entry id {after!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._check_block(block_ms)
        reply = self.redis.xread({self.keys.frames(job_id): after}, count=count,
                                 block=block_ms or None)
        return [parse_entry(text(entry_id), fields)
                for entry_id, fields in stream_entries(reply)]

    def read_stream(self, job_id: str) -> tuple[bytes | None, list[FragmentEntry],
                                                  EndEntry | None]:
        """The init segment, fragment entries (in stream order) and end entry stored so
        far: what a finished job's file is assembled from."""
        init, parts, end, after = None, [], None, "0-0"
        while entries := self.read_fragments(job_id, after=after, count=512):
            after = entries[-1].entry_id
            for e in entries:
                if isinstance(e, InitEntry):
                    init = e.data
                elif isinstance(e, FragmentEntry):
                    parts.append(e)
                elif isinstance(e, EndEntry):
                    end = e
        return init, parts, end
