"""The store's connection: one Redis client, one key prefix, the registered scripts.

Every part of the store (:mod:`.queue`, :mod:`.records`, :mod:`.frames`, :mod:`.limits`)
is a mixin over :class:`StoreBase`; :class:`~.queue.JobQueue` puts them together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import scripts as lua
from .errors import redis_errors
from .keys import GROUP, Keys


class StoreBase:
    """Jobs, job records, frame streams and snapshots in one Redis, under one prefix.

    ``redis_client`` must return bytes (``decode_responses=False``): fragments are binary.
    Thread-safe as far as the client is (redis-py's is).
    """

    def __init__(self, redis_client: redis.Redis, prefix: str = "pomstream",
                 claim_idle_ms: int = 30_000, clock: Callable[[], float] = time.time):
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
        self.clock = clock  # unix time for limits and rate windows (tests freeze it)
        self._socket_timeout: float | None = kwargs.get("socket_timeout")
        self._claim_cursor = "0-0"
        scripts = {"submit": lua.SUBMIT, "heartbeat": lua.HEARTBEAT, "ack": lua.ACK,
                   "release": lua.RELEASE, "update": lua.UPDATE, "cancel": lua.CANCEL,
                   "expire": lua.EXPIRE, "save_snapshot": lua.SAVE_SNAPSHOT,
                   "set_init": lua.SET_INIT, "append": lua.APPEND, "event": lua.EVENT,
                   "finish": lua.FINISH, "claim_slot": lua.CLAIM_SLOT}
        # register_script sends nothing yet; each call uses EVALSHA and loads the script
        # again when Redis answers NOSCRIPT (e.g. after a restart).
        self._scripts = {name: redis_client.register_script(src) for name, src in scripts.items()}

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "pomstream", claim_idle_ms: int = 30_000,
                 socket_timeout: float = 30.0, retries: int = 2, **kwargs: Any) -> Self:
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

    @redis_errors
    def ping(self) -> bool:
        """True when Redis answers (QueueUnavailable otherwise)."""
        return bool(self.redis.ping())

    @redis_errors
    def depth(self) -> tuple[int, int]:
        """(entries in the queue stream, entries held by workers): queued + running."""
        length = int(self.redis.xlen(self.keys.queue))
        try:
            held = int(self.redis.xpending(self.keys.queue, GROUP)["pending"])
        except redis.ResponseError:  # no group yet: nothing is held
            held = 0
        return length, held
