"""Still images from frames: PNG bytes (thumbnails) and spritesheets (a grid of frames).

PyAV's PNG encoder does the encoding, so no imaging library is needed.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np

SPRITE_FRAMES = 16  # frames in a spritesheet (a 4 x 4 grid)


def decode_all(data: bytes) -> list[np.ndarray]:
    """Every frame of an MP4 held in memory, RGB uint8 (H, W, 3)."""
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes (PyAV's png encoder: no extra dependency)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


IMAGE_FORMATS = ("png", "jpeg", "webp")


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """An RGB uint8 image as PNG, JPEG (quality ~95) or WebP (lossless) bytes, by PyAV's
    encoders."""
    if fmt == "png":
        return encode_png(image)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    h, w = image.shape[:2]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    if fmt == "jpeg":
        codec = av.CodecContext.create("mjpeg", "w")
        codec.pix_fmt, codec.options = "yuvj444p", {"qmin": "1", "qmax": "2"}
        frame = frame.reformat(format="yuvj444p")
    else:
        codec = av.CodecContext.create("libwebp", "w")
        codec.pix_fmt, codec.options = "bgra", {"lossless": "1"}
        frame = frame.reformat(format="bgra")
    codec.width, codec.height = w, h
    codec.time_base = Fraction(1, 1)
    frame.pts = 0
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


def spritesheet(frames: list[np.ndarray], count: int = SPRITE_FRAMES) -> np.ndarray:
    """Up to ``count`` evenly spaced frames in a square-ish grid, row by row."""
    picks = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, min(count, len(frames)))]
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    h, w, _ = picks[0].shape
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, frame in enumerate(picks):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
    return sheet
