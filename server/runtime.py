"""What one process holds: the store, the storage, what the served model makes and, for
``serve``, a :class:`~pomstream.server.engine.worker.Worker` with the loaded model.

With ``redis_url`` unset, the queue runs on fakeredis in this process (``serve`` only: an
API and a worker in different processes cannot share it). It is the same
:class:`~pomstream.server.store.JobQueue` code, Lua scripts included, that production runs
against Redis, so the tests against a real redis-server exercise the production path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pomstream.server.settings import ModelInfo, Settings, model_info
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue, QueueUnavailable

if TYPE_CHECKING:  # the API process never imports the engine
    from pomstream.server.engine.worker import Worker

log = logging.getLogger("pomstream.runtime")


def make_queue(settings: Settings) -> JobQueue:
    if settings.redis_url:
        return JobQueue.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                 claim_idle_ms=settings.claim_idle_ms)
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return JobQueue(client, prefix=settings.redis_prefix, claim_idle_ms=settings.claim_idle_ms)


@dataclass
class Runtime:
    settings: Settings
    queue: JobQueue
    storage: LocalStorage
    info: ModelInfo
    worker: Worker | None = None  # pomstream.server.engine.worker.Worker (serve only)

    @classmethod
    def build(cls, settings: Settings, with_worker: bool) -> Runtime:
        queue = make_queue(settings)
        try:  # jobs from before per-owner listings (idempotent)
            queue.migrate_listings()
        except QueueUnavailable:  # Redis down at start: next start; the API answers 503s
            log.warning("listings not migrated: Redis unavailable at start")
        storage = LocalStorage(settings.storage_dir)
        info = model_info(settings.model)
        worker = None
        if with_worker:  # the engine loads the model (torch): only serve and worker do
            from pomstream.server.engine.build import build_worker

            worker = build_worker(settings, queue, storage).start()
        return cls(settings, queue, storage, info, worker)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
