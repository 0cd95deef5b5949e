"""Live fMP4 encoding: real libx264 fragments, decoded back with PyAV."""

import io
import re
import struct

import av
import numpy as np
import pytest

from pomstream.media.fmp4 import (
    Fragment,
    LiveEncoder,
    annexb_to_length_prefixed,
    find_box,
    parse_boxes,
)

SIZE, FPS, N, INTERVAL = 64, 30, 30, 8


def moving_square(i: int) -> np.ndarray:
    """A smooth gradient background with a red square that moves 2 px per frame."""
    ramp = np.linspace(40, 200, SIZE).astype(np.uint8)
    frame = np.empty((SIZE, SIZE, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = ramp[:, None], ramp[None, :], 90
    x = 2 * i % (SIZE - 16)
    frame[20:36, x:x + 16] = (230, 30, 30)
    return frame


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), format="mp4") as container:
        return list(container.decode(video=0))


@pytest.fixture(scope="module")
def stream():
    frames = [moving_square(i) for i in range(N)]
    enc = LiveEncoder(SIZE, SIZE, FPS, crf=16, keyframe_interval=INTERVAL)
    init = enc.init_segment()  # before any frame
    fragments = [enc.encode(f) for f in frames]
    tail = enc.close()
    return enc, init, fragments, tail, frames


def test_init_segment_ready_before_first_frame():
    enc = LiveEncoder(SIZE, SIZE, FPS)
    init = enc.init_segment()
    assert [kind for kind, _, _ in parse_boxes(init)] == ["ftyp", "moov"]
    find_box(init, "moov/mvex/trex")  # fragmented: the moov announces movie fragments
    assert enc.frames == 0
    enc.close()


def test_roundtrip_decodes_every_frame(stream):
    enc, init, fragments, tail, frames = stream
    assert tail == b""
    decoded = decode(init + b"".join(f.data for f in fragments))
    assert len(decoded) == N
    for i, (got, want) in enumerate(zip(decoded, frames, strict=True)):
        rgb = got.to_ndarray(format="rgb24")
        assert rgb.shape == (SIZE, SIZE, 3)
        err = np.abs(rgb.astype(int) - want).mean()
        assert err < 10, f"frame {i}: mean abs error {err:.1f}"
        assert got.time == pytest.approx(i / FPS, abs=1e-3)


def test_each_fragment_is_one_moof_mdat_with_one_sample(stream):
    _, _, fragments, _, _ = stream
    for i, frag in enumerate(fragments):
        assert isinstance(frag, Fragment) and frag.index == i
        assert frag.timestamp == pytest.approx(i / FPS)
        assert [kind for kind, _, _ in parse_boxes(frag.data)] == ["moof", "mdat"]
        trun = find_box(frag.data, "moof/traf/trun")
        flags, count, data_offset = struct.unpack_from(">IIi", trun)
        assert count == 1
        assert flags & 1  # data offset present ...
        moof_size = parse_boxes(frag.data)[0][2]
        assert data_offset == moof_size + 8  # ... and points at the mdat payload
        (seq,) = struct.unpack_from(">I", find_box(frag.data, "moof/mfhd"), 4)
        assert seq == i + 1
        (decode_time,) = struct.unpack_from(">Q", find_box(frag.data, "moof/traf/tfdt"), 4)
        assert decode_time == i * 512  # mp4 timescale 15360 at 30 fps


def test_fragment_is_complete_when_encode_returns():
    # No frame may be held back: after k encode calls, k frames must be decodable.
    with LiveEncoder(SIZE, SIZE, FPS, keyframe_interval=INTERVAL) as enc:
        data = enc.init_segment()
        for k in range(1, 4):
            data += enc.encode(moving_square(k)).data
            assert len(decode(data)) == k


def test_keyframes_follow_the_interval(stream):
    _, _, fragments, _, _ = stream
    assert [f.keyframe for f in fragments] == [i % INTERVAL == 0 for i in range(N)]
    for frag in fragments:  # the sample flags in the trun agree with the flag
        (sample_flags,) = struct.unpack_from(">I", find_box(frag.data, "moof/traf/trun"), 20)
        non_sync = bool(sample_flags & 0x00010000)
        assert non_sync != frag.keyframe


def test_late_joiner_starts_at_latest_keyframe(stream):
    _, init, fragments, _, frames = stream
    start = max(f.index for f in fragments if f.keyframe)
    assert start == (N - 1) // INTERVAL * INTERVAL and start > 0
    decoded = decode(init + b"".join(f.data for f in fragments[start:]))
    assert len(decoded) == N - start
    assert decoded[0].time == pytest.approx(start / FPS, abs=1e-3)
    for got, want in zip(decoded, frames[start:], strict=True):
        assert np.abs(got.to_ndarray(format="rgb24").astype(int) - want).mean() < 10


def test_codec_string_comes_from_the_sps(stream):
    enc, init, _, _, _ = stream
    assert re.fullmatch(r'video/mp4; codecs="avc1\.[0-9A-F]{6}"', enc.mime_type)
    avcc = find_box(init, "moov/trak/mdia/minf/stbl/stsd/avc1/avcC")
    sps_len = int.from_bytes(avcc[6:8], "big")
    sps = avcc[8:8 + sps_len]
    assert sps[0] & 0x1F == 7  # NAL type 7: the sequence parameter set
    assert enc.codec == "avc1." + sps[1:4].hex().upper()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="even"):
        LiveEncoder(63, 64, FPS)
    with pytest.raises(ValueError, match="positive"):
        LiveEncoder(0, 64, FPS)
    with LiveEncoder(SIZE, SIZE, FPS) as enc:
        good = moving_square(0)
        with pytest.raises(ValueError, match="uint8"):
            enc.encode(good.astype(np.float32))
        with pytest.raises(ValueError, match=r"shape \(64, 64, 3\)"):
            enc.encode(good[:32])
        with pytest.raises(ValueError, match="shape"):
            enc.encode(np.zeros((SIZE, SIZE, 4), np.uint8))
        with pytest.raises(ValueError, match="shape"):
            enc.encode(good[..., 0])
        with pytest.raises(ValueError, match="numpy"):
            enc.encode(good.tolist())
        assert enc.encode(good).keyframe  # rejected frames did not count
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode(good)


def test_parse_boxes_sizes_and_errors():
    plain = struct.pack(">I4s", 12, b"free") + b"abcd"
    large = struct.pack(">I4sQ", 1, b"mdat", 19) + b"xyz"
    to_end = struct.pack(">I4s", 0, b"skip") + b"12345"
    data = plain + large + to_end
    assert parse_boxes(data) == [("free", 0, 12), ("mdat", 12, 19), ("skip", 31, 13)]
    assert find_box(data, "mdat") == b"xyz"
    with pytest.raises(KeyError, match="moov"):
        find_box(data, "moov/trak")
    with pytest.raises(ValueError, match="remain"):
        parse_boxes(plain[:-1])
    with pytest.raises(ValueError, match="truncated"):
        parse_boxes(plain + b"\x00\x00")


def test_annexb_conversion():
    stream = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\xcc\x00\x00\x00\x01\x65\x01"
    assert annexb_to_length_prefixed(stream) == (
        b"\x00\x00\x00\x02\x67\xaa" b"\x00\x00\x00\x03\x68\xbb\xcc" b"\x00\x00\x00\x02\x65\x01"
    )
    with pytest.raises(ValueError, match="start code"):
        annexb_to_length_prefixed(b"\x67\xaa")


def _mfhd_sequence(fragment: bytes) -> int:
    return struct.unpack(">I", find_box(fragment, "moof/mfhd")[4:8])[0]


def _tfdt(fragment: bytes) -> int:
    return struct.unpack(">Q", find_box(fragment, "moof/traf/tfdt")[4:12])[0]


def test_restart_at_a_keyframe_continues_the_same_stream():
    """A worker that lost its encoder restarts one at frame k (a keyframe): the fragments
    carry frame k's numbers and, at a constant quantizer, decode to the same pictures, so
    fragments from both encoders can be mixed in one stream without a visible seam."""
    frames = [moving_square(i) for i in range(3 * INTERVAL)]
    with LiveEncoder(SIZE, SIZE, FPS, qp=20, keyframe_interval=INTERVAL) as first:
        original = [first.encode(f) for f in frames]
        init = first.init_segment()
    with LiveEncoder(SIZE, SIZE, FPS, qp=20, keyframe_interval=INTERVAL,
                     start_index=INTERVAL) as second:
        assert second.init_segment() == init and second.frames == INTERVAL
        resumed = [second.encode(f) for f in frames[INTERVAL:]]
    for a, b in zip(original[INTERVAL:], resumed, strict=True):
        assert (a.index, a.keyframe, a.timestamp) == (b.index, b.keyframe, b.timestamp)
        assert _mfhd_sequence(a.data) == _mfhd_sequence(b.data) == a.index + 1
        assert _tfdt(a.data) == _tfdt(b.data)
    # the first encoder wrote up to frame 12 before "crashing"; the second one goes on
    mixed = [f.data for f in original[:INTERVAL + 4]] + [f.data for f in resumed[4:]]
    whole = decode(init + b"".join(f.data for f in original))
    joined = decode(init + b"".join(mixed))
    assert len(joined) == len(whole) == len(frames)
    for a, b in zip(whole, joined, strict=True):
        assert np.array_equal(a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24"))


def test_cut_starts_a_gop_anywhere():
    """A live session restarts its encoder between keyframes: the first frame is an IDR
    frame and the cadence k, 2k, ... goes on after it."""
    with LiveEncoder(SIZE, SIZE, FPS, qp=20, keyframe_interval=INTERVAL, start_index=3,
                     cut=True) as enc:
        out = [enc.encode(moving_square(i)) for i in range(3, 3 + 2 * INTERVAL)]
        init = enc.init_segment()
    assert [f.index for f in out if f.keyframe] == [3, INTERVAL, 2 * INTERVAL]
    assert len(decode(init + b"".join(f.data for f in out))) == len(out)


def test_restart_options_are_checked():
    with pytest.raises(ValueError, match="multiple of keyframe_interval"):
        LiveEncoder(SIZE, SIZE, FPS, keyframe_interval=INTERVAL, start_index=3)
    with pytest.raises(ValueError, match="start_index"):
        LiveEncoder(SIZE, SIZE, FPS, keyframe_interval=INTERVAL, start_index=-INTERVAL)
    with pytest.raises(ValueError, match="qp"):
        LiveEncoder(SIZE, SIZE, FPS, qp=60)
