"""Where finished videos go: a small storage interface and a local-directory backend.

Objects are addressed by a job id and a *variant* (``video``, ``thumbnail``,
``spritesheet``), never by a path taken from a request: the id is validated against the
queue's id pattern and the variant against a fixed table, so nothing from a request reaches
the filesystem beyond those two checked tokens.

Writes go to a temporary file that is renamed into place, so a reader never sees half a
video and a worker that crashes mid-write leaves no object behind. Expiry: job records in
Redis expire after ``video_ttl_s``; :meth:`LocalStorage.sweep` removes files older than that
(the API and workers call it now and then), and the API only serves a file whose job record
still exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO, Protocol

from pomstream.server.store import check_id

VIDEO_VARIANTS = {"video": ".mp4", "thumbnail": ".png", "spritesheet": ".sprites.png"}
IMAGE_VARIANTS = {"png": ".image.png", "jpeg": ".jpg", "webp": ".webp"}  # one per image
VARIANTS = {**VIDEO_VARIANTS, **IMAGE_VARIANTS}
MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/png", "spritesheet": "image/png",
               "png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class Storage(Protocol):
    def put(self, job_id: str, variant: str, data: bytes) -> None: ...

    def open(self, job_id: str, variant: str) -> BinaryIO | None: ...

    def delete(self, job_id: str) -> None: ...

    def sweep(self, max_age_s: float) -> int: ...


class LocalStorage:
    """Objects as files ``<root>/<job id><suffix>``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, variant: str) -> Path:
        check_id(job_id, "job id")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}")
        return self.root / f"{job_id}{VARIANTS[variant]}"

    def put(self, job_id: str, variant: str, data: bytes) -> None:
        path = self._path(job_id, variant)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def open(self, job_id: str, variant: str) -> BinaryIO | None:
        try:
            return self._path(job_id, variant).open("rb")
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> None:
        for variant in VARIANTS:
            self._path(job_id, variant).unlink(missing_ok=True)

    def sweep(self, max_age_s: float) -> int:
        """Remove objects (and stale temporary files) older than ``max_age_s``."""
        cutoff, removed = time.time() - max_age_s, 0
        for path in self.root.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept it first
                pass
        return removed
