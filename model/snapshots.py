"""The byte format of session snapshots: a magic, a JSON header, then the payload.

A plain session's payload is its safetensors (``model/streaming.py``), a layered
session's the snapshots of its layers (``model/layers.py``); both are framed here, and
both raise :class:`SnapshotError` for bytes that are not, or no longer, a snapshot.
"""

from __future__ import annotations

import json
import struct


class SnapshotError(ValueError):
    """A snapshot that is corrupt, of another version, or of another model."""


def pack(magic: bytes, header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return magic + struct.pack("<I", len(head)) + head + payload


def is_kind(data, magic: bytes) -> bool:
    """Whether ``data`` starts like a snapshot framed with ``magic``."""
    return isinstance(data, bytes | bytearray | memoryview) and bytes(data[: len(magic)]) == magic


def unpack(data, magic: bytes, fmt: str, versions: tuple[int, ...]) -> tuple[dict, bytes]:
    """(header, payload) of ``pack`` output; SnapshotError unless it is of format ``fmt``
    at one of ``versions``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SnapshotError("a snapshot is bytes")
    data = bytes(data)
    start = len(magic)
    if not data.startswith(magic) or len(data) < start + 4:
        raise SnapshotError(f"not a {fmt} snapshot")
    (n,) = struct.unpack("<I", data[start : start + 4])
    try:
        header = json.loads(data[start + 4 : start + 4 + n])
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise SnapshotError(f"not a {fmt} snapshot")
    if header.get("version") not in versions:
        raise SnapshotError(f"snapshot version {header.get('version')} is not supported "
                            f"(this build reads versions {versions})")
    return header, data[start + 4 + n :]
