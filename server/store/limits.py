"""Per-owner limits (an owner: an API key's hash): slots of running work, request rates.
"""

from __future__ import annotations

import math

from .base import StoreBase
from .errors import redis_errors
from .keys import check_id


class LimitsMixin(StoreBase):
    # --- per-owner limits (an owner: an API key's hash, see http/deps.py) -------

    @redis_errors
    def claim_slot(self, owner: str, job_id: str, limit: int, grace_s: int = 30,
                   submitted: bool = False) -> bool:
        """Count ``job_id`` among ``owner``'s running work unless ``limit`` other jobs
        or sessions of theirs are queued or running; False when they are. A job not
        ``submitted`` yet counts for ``grace_s`` until ``confirm_slot``."""
        check_id(owner, "owner")
        check_id(job_id, "job id")
        now = int(self.clock())
        return bool(self._script("claim_slot", [self.keys.owner(owner)],
                                 [self.keys.job_prefix, int(limit), job_id, now,
                                  int(grace_s), 0 if submitted else now]))

    @redis_errors
    def confirm_slot(self, owner: str, job_id: str) -> None:
        """The job of a claimed slot is submitted: from now on its record decides."""
        self.redis.zadd(self.keys.owner(check_id(owner, "owner")), {job_id: 0}, xx=True)

    @redis_errors
    def release_slot(self, owner: str, job_id: str) -> None:
        self.redis.zrem(self.keys.owner(check_id(owner, "owner")), job_id)

    @redis_errors
    def hit_rate(self, owner: str, limit: int, window_s: int = 60) -> int:
        """Count a request of ``owner`` in the current window: 0 if it is within
        ``limit`` requests per ``window_s``, else the seconds until the window ends."""
        check_id(owner, "owner")
        now = self.clock()
        window = int(now // window_s)
        key = self.keys.rate(owner, window)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window_s + 1)
        count = pipe.execute()[0]
        return 0 if count <= limit else max(1, math.ceil((window + 1) * window_s - now))
