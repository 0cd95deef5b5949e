"""Which workers are alive: a sorted set of worker id -> last heartbeat (unix time).

Workers beat; the API's ``/readyz`` asks whether any worker beat recently.
"""

from __future__ import annotations

import time

from .errors import QueueUnavailable
from .queue import JobQueue


class WorkerRegistry:
    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.key = queue.keys.workers

    def beat(self, worker_id: str) -> None:
        try:
            self.queue.redis.zadd(self.key, {worker_id: time.time()})
        except Exception as exc:  # noqa: BLE001 - any Redis failure is an outage here
            raise QueueUnavailable(str(exc)) from exc

    def remove(self, worker_id: str) -> None:
        self.queue.redis.zrem(self.key, worker_id)

    def alive(self, max_age_s: float) -> list[str]:
        try:
            ids = self.queue.redis.zrangebyscore(self.key, time.time() - max_age_s, "+inf")
        except Exception as exc:  # noqa: BLE001 - any Redis failure: nobody is known alive
            raise QueueUnavailable(str(exc)) from exc
        return [i.decode() if isinstance(i, bytes) else i for i in ids]
