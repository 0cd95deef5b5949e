"""Every Redis key name and id rule of the store, in one place (see the package docs)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

GROUP = "workers"  # the queue stream's consumer group
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENTRY_ID_RE = re.compile(r"^\d+(-\d+)?$")


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: must match {ID_RE.pattern}")
    return value


def new_job_id(kind: str = "video") -> str:
    return f"{kind}_{secrets.token_hex(12)}"


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

    def view(self, sid: str) -> str:
        """A live session's attached viewer (hash)."""
        return f"{self.prefix}:view:{sid}"

    def ctl(self, sid: str) -> str:
        """A live session's control messages for its worker (stream)."""
        return f"{self.prefix}:ctl:{sid}"

    @property
    def job_prefix(self) -> str:
        """What every job record key starts with (scripts that find records by id)."""
        return f"{self.prefix}:job:"

    def listing(self, owner: str, kind: str) -> str:
        """One owner's jobs of one kind in submission order (sorted set); owner ``*``:
        everyone's. What ``list_jobs`` pages through, so that a page is never cut before
        rows are filtered out."""
        return f"{self.prefix}:list:{owner}:{kind}"

    @property
    def listed(self) -> str:
        """Job id -> ``owner:kind`` (hash): which listings hold a job, so that a job whose
        keys expired can be taken out of them."""
        return f"{self.prefix}:jobs:listed"

    @property
    def listings_migrated(self) -> str:
        """Set once every job from before per-owner listings has been put into them."""
        return f"{self.prefix}:list:migrated"

    def owner(self, owner: str) -> str:
        """An owner's slots of running work (sorted set)."""
        return f"{self.prefix}:owner:{owner}"

    def rate(self, owner: str, window: int) -> str:
        """An owner's request count in one rate window (string)."""
        return f"{self.prefix}:rate:{owner}:{window}"

    def content(self, owner: str, sha256: str) -> str:
        """The job of ``owner`` whose finished video file has this hash (string): per
        owner, as two keys may make byte-identical videos."""
        return f"{self.prefix}:content:{owner}:{sha256}"

    @property
    def workers(self) -> str:
        """Live workers and their last heartbeat (sorted set)."""
        return f"{self.prefix}:workers"

    @property
    def capacity(self) -> str:
        """Per live worker: how many more jobs it can take (hash worker id -> count)."""
        return f"{self.prefix}:workers:capacity"

    def of_job(self, job_id: str) -> list[str]:
        """Every key that belongs to one job, its record first."""
        return [self.job(job_id), self.frames(job_id), self.meta(job_id),
                self.snapshot(job_id), self.cancel(job_id)]
