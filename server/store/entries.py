"""What the store hands out: leases, records pages, frame-stream entries, snapshots; and
the (de)serialisation of values and stream replies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_SEQ = 2**64 - 1
JOB_KINDS = ("video", "session", "image")
JOB_STATUSES = ("queued", "in_progress", "completed", "failed")
FINAL_STATUSES = ("completed", "failed")
# Record fields the queue owns; a submitted job may not set them.
RESERVED_FIELDS = frozenset({"status", "progress", "created_at", "completed_at", "error",
                             "expires_at"})


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def flatten(mapping: dict[str, Any]) -> list[str]:
    return [item for key, value in mapping.items() for item in (key, dumps(value))]


@dataclass(frozen=True)
class Lease:
    """A job handed to one consumer; end it with ``ack`` or ``release``."""

    job: dict[str, Any]
    entry_id: str
    consumer: str

    @property
    def job_id(self) -> str:
        return self.job["id"]


@dataclass(frozen=True)
class InitSegment:
    data: bytes
    mime: str


@dataclass(frozen=True)
class KeyframeRef:
    """The newest keyframe fragment of a job's frame stream."""

    entry_id: str
    index: int

    @property
    def cursor(self) -> str:
        """The ``after`` for ``read_fragments`` whose first entry is this keyframe."""
        ms, seq = (int(part) for part in self.entry_id.split("-"))
        return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{MAX_SEQ}"


@dataclass(frozen=True)
class InitEntry:
    entry_id: str
    data: bytes
    mime: str


@dataclass(frozen=True)
class FragmentEntry:
    entry_id: str
    index: int
    data: bytes
    keyframe: bool


@dataclass(frozen=True)
class EventEntry:
    entry_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class EndEntry:
    """The last entry of a frame stream: the job's final status."""

    entry_id: str
    status: str
    error: Any = None


StreamEntry = InitEntry | FragmentEntry | EventEntry | EndEntry


@dataclass(frozen=True)
class JobPage:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False

    @property
    def first_id(self) -> str | None:
        return self.jobs[0]["id"] if self.jobs else None

    @property
    def last_id(self) -> str | None:
        return self.jobs[-1]["id"] if self.jobs else None


class Snapshot(NamedTuple):
    data: bytes
    frame_index: int


def stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        return entries[0] if entries and isinstance(entries[0], list) else entries
    return reply[0][1]


def decode_record(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    return {text(k): json.loads(v) for k, v in raw.items()} if raw else None


def parse_entry(entry_id: str, fields: dict[bytes, bytes]) -> StreamEntry:
    kind = fields[b"type"]
    if kind == b"fragment":
        return FragmentEntry(entry_id, int(fields[b"index"]), fields[b"data"],
                             fields[b"keyframe"] == b"1")
    if kind == b"init":
        return InitEntry(entry_id, fields[b"data"], text(fields[b"mime"]))
    if kind == b"event":
        return EventEntry(entry_id, json.loads(fields[b"data"]))
    if kind == b"end":
        end = json.loads(fields[b"data"])
        return EndEntry(entry_id, end["status"], end.get("error"))
    raise ValueError(f"unknown frame stream entry type {kind!r}")
