"""Prometheus metrics, written in the text exposition format (version 0.0.4) by hand.

Three small types cover what the server reports: :class:`Counter`, :class:`Gauge` and
:class:`Histogram` (cumulative ``le`` buckets, ``_sum``, ``_count``), each with optional
labels and a lock (the stepping thread, encode lanes and the API's threads all touch them).

What is measured where
----------------------
* A worker owns a :class:`WorkerMetrics`: frames generated (by job kind), the frame rate
  over the last ``RATE_WINDOW_S`` seconds, time to first frame (from the job's queue entry,
  whose Redis id is its enqueue time in ms, to its first fragment stored by this run),
  per-frame latency (from the start of the batched step that made a frame to its fragment
  being stored: model + encode + Redis), encode time per frame, and active jobs by kind.
* The API computes queue gauges at scrape time from Redis (entries waiting, entries held
  by workers) and counts its open live-session WebSockets.

``GET /metrics`` renders the API's gauges plus, for ``pomstream serve``, the in-process
worker's metrics. Separate ``pomstream worker`` processes have no HTTP server; scraping them
is not covered yet.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TTFF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ENCODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
RATE_WINDOW_S = 10.0


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                                for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float],
                 labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list[float]] = {}  # counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return int(series[-1]) if series else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        lines = self.header()
        for key, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} "
                             f"{_num(count)}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} "
                         f"{_num(series[-1])}")
        return lines


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = RATE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._events.append((self.clock(), n))
            self._trim()

    def rate(self) -> float:
        with self._lock:
            self._trim()
            return sum(n for _, n in self._events) / self.window_s

    def _trim(self) -> None:
        cutoff = self.clock() - self.window_s
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()


class WorkerMetrics:
    """What one worker measures (see the module docstring)."""

    def __init__(self):
        self.frames = Counter("pomstream_frames_generated_total",
                              "Frames generated by this worker.", ["kind"])
        self.rate = RateMeter()
        self.ttff = Histogram("pomstream_time_to_first_frame_seconds",
                              "From a job's queue entry to its first stored fragment.",
                              TTFF_BUCKETS, ["kind"])
        self.frame_latency = Histogram("pomstream_frame_latency_seconds",
                                       "From the start of the step that made a frame to its "
                                       "fragment being stored.", LATENCY_BUCKETS, ["kind"])
        self.encode = Histogram("pomstream_encode_seconds", "H.264 encoding time per frame.",
                                ENCODE_BUCKETS)
        self.active = Gauge("pomstream_active_jobs", "Jobs (videos, live sessions) this "
                            "worker holds in its batch.", ["kind"])

    def render(self, active: dict[str, int]) -> list[str]:
        for kind in ("video", "session", "image"):
            self.active.set(active.get(kind, 0), kind=kind)
        fps = Gauge("pomstream_frames_per_second", f"Frames generated per second over the "
                    f"last {RATE_WINDOW_S:.0f} s.")
        fps.set(self.rate.rate())
        lines: list[str] = []
        for metric in (self.frames, fps, self.active, self.ttff, self.frame_latency,
                       self.encode):
            lines += metric.render()
        return lines


def queue_gauges(queue) -> list[str]:
    """Jobs waiting in the queue and jobs held by workers, read from Redis now."""
    length, held = queue.depth()
    depth = Gauge("pomstream_queue_depth", "Jobs waiting for a worker.")
    depth.set(max(0, length - held))
    running = Gauge("pomstream_jobs_held", "Jobs taken by workers and not finished yet.")
    running.set(held)
    return depth.render() + running.render()


def render(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
