"""One follower of a job's frame stream, for every WebSocket that forwards one.

A viewer reads the stream from a cursor (``0-0``: from the start) and then blocks on the
last entry it saw, in a worker thread (the Redis client is synchronous), bounded by the
app's limiter so that blocked reads cannot take every thread.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import anyio

from pomstream.server.store import JobQueue, StreamEntry

BLOCK_MS = 1000  # a blocking read returns empty after this long (time to check the viewer)


class StreamFollower:
    """``async for entries in StreamFollower(...).batches()``: each batch of entries in
    stream order (empty when nothing came within ``block_ms``); ``cursor`` is the last
    entry id read."""

    def __init__(self, queue: JobQueue, job_id: str, cursor: str = "0-0",
                 limiter: anyio.CapacityLimiter | None = None, count: int = 32,
                 block_ms: int = BLOCK_MS):
        self.queue, self.job_id, self.cursor = queue, job_id, cursor
        self.limiter, self.count, self.block_ms = limiter, count, block_ms

    async def batches(self) -> AsyncIterator[list[StreamEntry]]:
        while True:
            read = functools.partial(self.queue.read_fragments, self.job_id,
                                     after=self.cursor, block_ms=self.block_ms,
                                     count=self.count)
            entries = await anyio.to_thread.run_sync(read, limiter=self.limiter)
            if entries:
                self.cursor = entries[-1].entry_id
            yield entries
