"""Which workers are alive and how much more they can take.

A sorted set of worker id -> last heartbeat (unix time), and a hash of worker id -> spare
capacity (how many more jobs it would take now: free batch slots, or more sessions to
time-slice while each still gets the minimum frame rate). Workers beat and report; the
API's ``/readyz`` asks whether any worker beat recently, and a new live session is refused
(``server_busy``) when the live workers' spare capacity is taken by what already waits.
"""

from __future__ import annotations

import time

from .errors import QueueUnavailable, redis_errors
from .queue import JobQueue


class WorkerRegistry:
    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.key = queue.keys.workers
        self.capacity_key = queue.keys.capacity
        # a worker that missed three heartbeats (and a few seconds more) is not alive
        self.max_age_s = 3 * queue.heartbeat_interval_s + 5

    def beat(self, worker_id: str, spare: int | None = None) -> None:
        """Mark ``worker_id`` alive now; with ``spare``, also record its spare capacity."""
        try:
            pipe = self.queue.redis.pipeline(transaction=False)
            pipe.zadd(self.key, {worker_id: time.time()})
            if spare is not None:
                pipe.hset(self.capacity_key, worker_id, max(0, int(spare)))
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure is an outage here
            raise QueueUnavailable(str(exc)) from exc

    def remove(self, worker_id: str) -> None:
        pipe = self.queue.redis.pipeline(transaction=False)
        pipe.zrem(self.key, worker_id)
        pipe.hdel(self.capacity_key, worker_id)
        pipe.execute()

    def alive(self, max_age_s: float | None = None) -> list[str]:
        """Workers that beat within ``max_age_s`` (default: ``self.max_age_s``)."""
        max_age_s = self.max_age_s if max_age_s is None else max_age_s
        try:
            ids = self.queue.redis.zrangebyscore(self.key, time.time() - max_age_s, "+inf")
        except Exception as exc:  # noqa: BLE001 - any Redis failure: nobody is known alive
            raise QueueUnavailable(str(exc)) from exc
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    @redis_errors
    def spare(self, max_age_s: float | None = None) -> int | None:
        """Spare capacity summed over the workers alive within ``max_age_s`` (default:
        ``self.max_age_s``); None when no live worker reports one (nothing is known:
        admit, the queue holds the job)."""
        alive = self.alive(max_age_s)
        if not alive:
            return None
        values = self.queue.redis.hmget(self.capacity_key, alive)
        known = [int(v) for v in values if v is not None]
        return sum(known) if known else None
