"""Live fragmented-MP4 (fMP4) H.264 encoding, one frame per fragment, for MSE playback.

A browser's Media Source Extensions take an *init segment* (``ftyp`` + ``moov``: codec
parameters, no samples) followed by *media fragments* (``moof`` + ``mdat``: the samples).
Generated frames arrive one at a time, so every frame becomes its own fragment and can be
sent the moment it exists: nothing waits for a GOP or a fragment duration to fill up.

Design
------
* **Encoder.** libx264 with ``tune=zerolatency`` and no B-frames or lookahead, so each input
  frame yields exactly one packet immediately. ``encode`` checks that and raises if the
  encoder ever holds a frame back instead of silently adding latency.
* **Init segment from ffmpeg's mp4 muxer.** PyAV muxes into an in-memory sink with
  ``movflags=empty_moov+default_base_moof+frag_every_frame``; ``start_encoding()`` opens
  the codec (libx264 produces SPS/PPS as global extradata) and writes the header at once,
  so the init segment is ready in the constructor, *before the first frame*. Its avcC
  box holds the real SPS, from which ``codec`` / ``mime_type`` are derived.
* **Fragments written here.** The mov muxer closes a fragment only when the *next* packet
  arrives (or on an explicit ``av_write_frame(ctx, NULL)`` flush, which PyAV does not
  expose), so muxing through it would delay every frame by one frame. Instead each
  packet is wrapped here into ``moof`` (mfhd, traf: tfhd, tfdt, trun with one sample) +
  ``mdat``, using the track id and timescale parsed from ffmpeg's ``moov``. The muxer sees
  no packets; its trailer is discarded on ``close``.
* **Boxes.** ``parse_boxes`` splits a byte string into top-level boxes (32-bit size +
  type, 64-bit largesize when size == 1, size 0 = to the end) and ``find_box`` descends a
  path such as ``"moov/trak/mdia/mdhd"``.

Late joiners
------------
A viewer that connects mid-stream needs the init segment plus the fragments from the most
recent keyframe on (``Fragment.keyframe``); a keyframe comes every ``keyframe_interval``
frames (scene-cut keyframes are disabled so the cadence is exact). Fragments carry their
real decode time (``tfdt``), so such a viewer's buffer starts at that time, not at 0: seek
the media element to ``buffered.start(0)`` or set ``SourceBuffer.timestampOffset``.

Restarting mid-stream
---------------------
A server that lost its encoder (a crashed worker) restarts one with ``start_index=k`` at a
keyframe-aligned frame k: fragments then carry the sequence numbers and decode times of
frames k, k+1, ... as if the first encoder had gone on. For the restarted encoder's
reference pictures to match what a decoder reconstructed from the first encoder's
fragments, the encoding of a GOP must not depend on anything before it: with ``qp`` set
(constant quantizer) there is no rate-control history, so the same frames from the same
keyframe on encode to the same pictures. With ``crf`` the quantizer of a frame depends on
the complexity of earlier GOPs, and a restarted encoder drifts slightly.
"""

from __future__ import annotations

import io
import numbers
import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

# Child boxes of these start after a fixed-size header of their own (ISO/IEC 14496-12:
# stsd has version/flags + entry count; a visual sample entry has 78 bytes of fields).
_CHILD_OFFSET = {"stsd": 8, "avc1": 78}

# trun sample_flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on nothing
# (sample_depends_on=2); any other sample depends on earlier ones and is not a sync sample.
_SYNC_SAMPLE_FLAGS = 0x02000000
_NON_SYNC_SAMPLE_FLAGS = 0x01010000
# trun flags: data-offset, sample-duration, sample-size and sample-flags present.
_TRUN_FLAGS = 0x000001 | 0x000100 | 0x000200 | 0x000400
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000

_MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame"


def _iter_boxes(data: bytes, start: int = 0, end: int | None = None):
    """Yield (type, offset, size, header_size) for the boxes in data[start:end]."""
    end = len(data) if end is None else end
    offset = start
    while offset < end:
        if end - offset < 8:
            raise ValueError(f"truncated box header at offset {offset}")
        size, raw_type = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:  # the real size follows as a 64-bit largesize
            if end - offset < 16:
                raise ValueError(f"truncated largesize header at offset {offset}")
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:  # the box extends to the end of the data
            size = end - offset
        if size < header or offset + size > end:
            raise ValueError(
                f"box {raw_type!r} at offset {offset} has size {size}, "
                f"but only {end - offset} bytes remain"
            )
        yield raw_type.decode("latin-1"), offset, size, header
        offset += size


def parse_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """Split data[start:end] into consecutive MP4 boxes: a list of (type, offset, size).

    Offsets are absolute in ``data`` and sizes include the box header. Raises ValueError if
    the bytes do not divide exactly into whole boxes.
    """
    return [(kind, offset, size) for kind, offset, size, _ in _iter_boxes(data, start, end)]


def find_box(data: bytes, path: str) -> bytes:
    """Payload (bytes after the header) of the first box at ``path``, e.g. "moof/traf/trun".

    Raises KeyError if a box along the path is missing.
    """
    start, end = 0, len(data)
    names = path.split("/")
    parent = ""
    for depth, name in enumerate(names):
        for kind, offset, size, header in _iter_boxes(data, start, end):
            if kind == name:
                start, end = offset + header, offset + size
                break
        else:
            raise KeyError(f"no {name!r} box in {parent or 'top level'} (path {path!r})")
        if depth < len(names) - 1:
            start += _CHILD_OFFSET.get(name, 0)
        parent = name
    return bytes(data[start:end])


def _box(kind: str, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    if len(payload) + 8 <= 0xFFFFFFFF:
        return struct.pack(">I4s", len(payload) + 8, kind.encode()) + payload
    return struct.pack(">I4sQ", 1, kind.encode(), len(payload) + 16) + payload


def _full_box(kind: str, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def annexb_to_length_prefixed(data: bytes, length_size: int = 4) -> bytes:
    """Convert an Annex B byte stream (start codes) into MP4 length-prefixed NAL units."""
    out = []
    pos = data.find(b"\x00\x00\x01")
    if pos < 0:
        raise ValueError("no Annex B start code in H.264 packet")
    while pos >= 0:
        begin = pos + 3
        pos = data.find(b"\x00\x00\x01", begin)
        # A NAL unit never ends in a zero byte, so trailing zeros belong to the next
        # 4-byte start code (or are padding).
        nal = data[begin : len(data) if pos < 0 else pos].rstrip(b"\x00")
        if nal:
            out.append(len(nal).to_bytes(length_size, "big") + nal)
    return b"".join(out)


def _avcc_info(init: bytes) -> tuple[str, int]:
    """(RFC 6381 codec string, NAL length size) from the avcC box of an init segment."""
    avcc = find_box(init, "moov/trak/mdia/minf/stbl/stsd/avc1/avcC")
    if len(avcc) < 7 or avcc[0] != 1:
        raise ValueError("malformed avcC box")
    # profile_idc, constraint flags and level_idc are copied from the SPS into bytes 1-3.
    return "avc1." + avcc[1:4].hex().upper(), (avcc[4] & 0x03) + 1


def _track_id_and_timescale(init: bytes) -> tuple[int, int]:
    tkhd = find_box(init, "moov/trak/tkhd")
    (track_id,) = struct.unpack_from(">I", tkhd, 20 if tkhd[0] == 1 else 12)
    mdhd = find_box(init, "moov/trak/mdia/mdhd")
    (timescale,) = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)
    return track_id, timescale


def build_fragment(
    sequence: int, track_id: int, decode_time: int, duration: int, sample: bytes, keyframe: bool
) -> bytes:
    """One moof + mdat holding a single sample (already length-prefixed H.264)."""

    def moof(data_offset: int) -> bytes:
        flags = _SYNC_SAMPLE_FLAGS if keyframe else _NON_SYNC_SAMPLE_FLAGS
        trun = _full_box(
            "trun", 0, _TRUN_FLAGS, struct.pack(">IiIII", 1, data_offset, duration,
                                                len(sample), flags)
        )
        traf = _box(
            "traf",
            _full_box("tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id)),
            _full_box("tfdt", 1, 0, struct.pack(">Q", decode_time)),
            trun,
        )
        return _box("moof", _full_box("mfhd", 0, 0, struct.pack(">I", sequence)), traf)

    mdat = _box("mdat", sample)
    # data_offset counts from the start of moof (default-base-is-moof) to the sample bytes;
    # its value does not change the moof's size, so measure with a placeholder first.
    header = len(mdat) - len(sample)
    return moof(len(moof(0)) + header) + mdat


@dataclass(frozen=True)
class Fragment:
    """One encoded frame as a self-contained ``moof`` + ``mdat`` media fragment.

    ``index`` counts frames from 0, ``timestamp`` is its presentation time in seconds and
    ``keyframe`` says whether a decoder (a late joiner) can start here.
    """

    data: bytes
    index: int
    keyframe: bool
    timestamp: float


class _Sink(io.RawIOBase):
    """A write-only file object that keeps what the muxer writes."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)


class LiveEncoder:
    """Encode RGB frames one at a time into an init segment and one fragment per frame.

    ``init_segment()`` is available right after construction (before any frame).
    ``encode(frame)`` returns the frame's complete :class:`Fragment` immediately.
    ``close()`` returns trailing bytes (empty in practice, since the encoder holds nothing
    back). Keyframes fall on frames 0, k, 2k, ... for ``keyframe_interval`` k.
    ``start_index`` (a multiple of k) starts the numbering there, for an encoder restarted
    mid-stream; ``frames`` is the index of the next frame. With ``cut=True`` it may be any
    index: the first frame is then an IDR frame that starts a short GOP of its own, and the
    cadence k, 2k, ... goes on after it (a live session that resumes or changes its prompt
    between keyframes restarts its encoder there). ``qp`` sets a constant quantizer
    instead of ``crf`` (see "Restarting mid-stream" above).
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: int | Fraction = 30,
        crf: int = 20,
        keyframe_interval: int | None = None,
        preset: str = "veryfast",
        start_index: int = 0,
        qp: int | None = None,
        cut: bool = False,
    ):
        self.width, self.height = _check_size(width, height)
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf}")
        if keyframe_interval is None:
            keyframe_interval = max(1, round(2 * self.fps))
        if keyframe_interval < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
        self.keyframe_interval = int(keyframe_interval)
        if start_index < 0 or (start_index % self.keyframe_interval and not cut):
            raise ValueError(f"start_index must be a multiple of keyframe_interval "
                             f"{self.keyframe_interval}, got {start_index}")
        if qp is not None and not 0 <= qp <= 51:
            raise ValueError(f"qp must be in 0..51, got {qp}")
        self.start_index = int(start_index)
        self.frames = self.start_index  # index of the next frame
        self._closed = False

        self._sink = _Sink()
        self._container = av.open(
            self._sink, mode="w", format="mp4", options={"movflags": _MOVFLAGS}
        )
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {
            "preset": preset,
            "tune": "zerolatency",  # no frame threads, no lookahead: a packet per frame
            **({"qp": str(qp)} if qp is not None else {"crf": str(crf)}),
            "bf": "0",
            "g": str(self.keyframe_interval),
            "forced-idr": "1",  # forced keyframes are IDR frames, where decoding may start
            "x264-params": "scenecut=0",  # keep the keyframe cadence exact
        }
        self._container.start_encoding()  # opens libx264 and writes ftyp + moov now
        self._init = bytes(self._sink.buffer)
        self._sink.buffer.clear()
        kinds = [kind for kind, _, _ in parse_boxes(self._init)]
        if kinds != ["ftyp", "moov"]:
            raise RuntimeError(f"mp4 muxer wrote {kinds} as its header, expected ftyp + moov")
        self._codec, self._length_size = _avcc_info(self._init)
        self._track_id, self._timescale = _track_id_and_timescale(self._init)

    @property
    def codec(self) -> str:
        """RFC 6381 codec string from the stream's SPS, e.g. ``avc1.64001F``."""
        return self._codec

    @property
    def mime_type(self) -> str:
        """The type for ``MediaSource.addSourceBuffer``."""
        return f'video/mp4; codecs="{self._codec}"'

    def init_segment(self) -> bytes:
        """ftyp + moov: what every viewer must append before any fragment."""
        return self._init

    def encode(self, frame: np.ndarray) -> Fragment:
        """Encode one uint8 RGB frame of shape (height, width, 3) into its own fragment."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        self._check_frame(frame)
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames
        video_frame.time_base = 1 / self.fps
        if self.frames % self.keyframe_interval == 0 or self.frames == self.start_index:
            video_frame.pict_type = av.video.frame.PictureType.I
        packets = self._stream.encode(video_frame)
        if len(packets) != 1:  # the zero-latency promise: no frame held back, none merged
            raise RuntimeError(f"libx264 returned {len(packets)} packets for one frame")
        return self._fragment(packets[0])

    def close(self) -> bytes:
        """Flush the encoder and release it; returns any trailing fragments' bytes."""
        if self._closed:
            return b""
        self._closed = True
        tail = b"".join(self._fragment(p).data for p in self._stream.encode(None))
        # The muxer saw no packets; its trailer (an mfra index of nothing) is not sent.
        self._container.close()
        return tail

    def _fragment(self, packet: av.Packet) -> Fragment:
        index = self.frames
        self.frames += 1
        # Times are derived from the frame index so durations never drift with rounding.
        start, stop = (round(i * self._timescale / self.fps) for i in (index, index + 1))
        sample = annexb_to_length_prefixed(bytes(packet), self._length_size)
        data = build_fragment(
            index + 1, self._track_id, start, stop - start, sample, packet.is_keyframe
        )
        return Fragment(data, index, packet.is_keyframe, float(index / self.fps))

    def _check_frame(self, frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 RGB, got dtype {frame.dtype}")
        expected = (self.height, self.width, 3)
        if frame.shape != expected:
            raise ValueError(f"frame must have shape {expected} (H, W, RGB), got {frame.shape}")

    def __enter__(self) -> LiveEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_size(width: int, height: int) -> tuple[int, int]:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if value % 2:
            raise ValueError(f"{name} must be even for H.264 yuv420p, got {value}")
    return int(width), int(height)
