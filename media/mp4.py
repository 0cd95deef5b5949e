"""Video encoding with PyAV: H.264 in MP4 files.

Frames arrive one at a time (uint8 RGB, H x W x 3) and are encoded as they come, so a
video of any length is written with constant memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class Mp4Writer:
    """Write frames to an H.264 MP4; use as a context manager."""

    def __init__(self, path: str | Path, width: int, height: int, fps: int, crf: int = 18):
        if width % 2 or height % 2:
            raise ValueError("H.264 with yuv420p needs an even width and height")
        self.path = Path(path)
        self.frames = 0
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "medium"}

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected uint8 (H, W, 3) frames, got {frame.dtype} {frame.shape}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._tmp.replace(self.path)  # a crash never leaves a truncated file under the name

    def abort(self) -> None:
        self._container.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: int) -> int:
    """Encode an iterable of frames; returns the number written."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    with Mp4Writer(path, first.shape[1], first.shape[0], fps) as w:
        w.write(first)
        for frame in it:
            w.write(frame)
        return w.frames


def read_frames(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file to uint8 RGB (F, H, W, 3)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)
