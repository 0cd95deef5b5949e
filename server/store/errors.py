"""The store's errors, and the decorator that turns Redis outages into one of them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis

P = ParamSpec("P")
R = TypeVar("R")


class QueueError(Exception):
    """Base class of this module's errors."""


class QueueUnavailable(QueueError):
    """Redis cannot be reached (connection refused, timeout, still loading)."""


class JobNotFound(QueueError, LookupError):
    """No job with this id (never submitted, deleted or expired)."""


class JobExists(QueueError, ValueError):
    """A job with this id was already submitted."""


class FragmentOrderError(QueueError, ValueError):
    """A fragment index that skips ahead; ``expected`` is the index that may come next."""

    def __init__(self, job_id: str, index: int, expected: int):
        super().__init__(f"job {job_id}: fragment {index} out of order, expected {expected}")
        self.expected = expected


class StreamClosed(QueueError):
    """The job's frame stream already has its end entry."""


class InitConflict(QueueError, ValueError):
    """A different init segment was already stored for this job."""


def redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn redis-py's connection errors and timeouts into QueueUnavailable."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueUnavailable(f"Redis unavailable: {exc}") from exc

    return wrapper
