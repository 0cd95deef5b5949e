"""Per-digit layers (``layers="digits"``) against plain sessions run by hand."""

import numpy as np
import pytest

from pomstream.model import SnapshotError, StreamGenerator
from pomstream.model.layers import layer_seed
from pomstream.model.prompts import PromptError
from tests.support.models import randomized_model

P = dict(steps=2, first_steps=3, guidance=2.0, first_guidance=1.5)


@pytest.fixture(scope="module")
def gen():
    return StreamGenerator(randomized_model(prompt_encoder="digits", cond_norm=True))


def frames(session, n):
    return [session.next_frame() for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("prompt", ["digit 3", "3", ""])
def test_one_digit_is_the_joint_stream(gen, prompt):
    assert same(frames(gen.session(prompt, seed=5, layers="digits", **P), 3),
                frames(gen.session(prompt, seed=5, **P), 3))


def test_frames_are_the_maximum_of_single_digit_streams(gen):
    layered = frames(gen.session("digits 3, 7 and 3", seed=5, layers="digits", **P), 4)
    plain = [gen.session(p, seed=layer_seed(5, j), **P)
             for j, p in enumerate(["digit 3", "digit 7", "digit 3"])]
    ref = [np.maximum.reduce(gen.step(plain)) for _ in range(4)]
    assert same(layered, ref)
    assert not same(layered, frames(gen.session("digits 3, 7 and 3", seed=5, **P), 4))
    assert len({layer_seed(5, j) for j in range(3)}) == 3


def test_batched_with_others_as_alone(gen):
    specs = [("digits 1 and 2", 1, "digits"), ("digit 4", 2, "joint"),
             ("digits 5, 6 and 7", 3, "digits")]
    alone = [frames(gen.session(p, seed=s, layers=m, **P), 3) for p, s, m in specs]
    sessions = [gen.session(p, seed=s, layers=m, **P) for p, s, m in specs]
    batched = list(zip(*[gen.step(sessions) for _ in range(3)], strict=True))
    assert all(same(a, list(b)) for a, b in zip(alone, batched, strict=True))
    assert [s.frame_index for s in sessions] == [3, 3, 3]


def test_snapshot_restore_fork(gen):
    s = gen.session("digits 2 and 9", seed=4, layers="digits", **P)
    frames(s, 2)
    snap = s.snapshot()
    fork, variant = s.fork(), s.fork(seed=11)
    ref = frames(s, 3)
    restored = gen.restore(snap)
    assert (restored.frame_index, restored.prompt, restored.seed) == (2, "digits 2 and 9", 4)
    assert restored.state_bytes == s.state_bytes == 2 * gen.session("digit 2", **P).state_bytes
    assert same(frames(restored, 3), ref) and same(frames(fork, 3), ref)
    assert not np.array_equal(variant.next_frame(), ref[0])
    with pytest.raises(SnapshotError):
        gen.restore(snap[: len(snap) - 10])
    with pytest.raises(SnapshotError, match="other weights"):
        StreamGenerator(randomized_model(prompt_encoder="digits", cond_norm=True,
                                         seed=1)).restore(snap)


def test_prompt_change_keeps_named_digits_and_adds_new_ones(gen):
    s = gen.session("digits 3 and 7", seed=5, layers="digits", **P)
    frames(s, 2)
    three = s.layers[0].fork()  # the "digit 3" layer as a plain session, to go on by hand
    s.set_prompt("digits 3 and 1")
    assert [layer.prompt for layer in s.layers] == ["digit 3", "digit 1"]
    assert [layer.frame_index for layer in s.layers] == [2, 0]  # the 1 starts at its frame 0
    new = gen.session("digit 1", seed=layer_seed(5, 2), **P)
    assert same(frames(s, 2), [np.maximum(a, b) for a, b in zip(frames(three, 2),
                                                               frames(new, 2), strict=True)])
    assert s.frame_index == 4
    again = gen.restore(s.snapshot())
    assert [layer.prompt for layer in again.layers] == ["digit 3", "digit 1"]
    # layers are matched by digit: another wording of the same digit keeps its layer
    s.set_prompt("Digit 1")
    assert [(d, layer.frame_index) for d, layer in zip(s.digits, s.layers, strict=True)] == [
        (1, 2)]
    # the empty prompt lets every layer go on unprompted, and the digits come back to them
    s.set_prompt("digits 3 and 1")
    s.set_prompt("")
    assert [layer.prompt for layer in s.layers] == ["", ""]
    frames(s, 1)
    s.set_prompt("1 3")
    assert [(layer.prompt, layer.frame_index) for layer in s.layers] == [("digit 1", 3),
                                                                         ("digit 3", 1)]
    with pytest.raises(PromptError):
        s.set_prompt("a cat")
    assert s.prompt == "1 3"


def test_an_unprompted_start_becomes_the_first_digit(gen):
    s = gen.session("", seed=3, layers="digits", **P)
    frames(s, 2)
    s.set_prompt("digits 4 and 8")
    assert [layer.frame_index for layer in s.layers] == [2, 0]


def test_fold_goes_into_every_layer(gen):
    s = gen.session("digits 1 and 8", seed=2, layers="digits", **P)
    plain = gen.session("digit 6", seed=2, **P)
    gen.fold([s, plain], np.zeros((2, 16, 16), np.uint8) + 200)
    assert s.frame_index == 1 and [layer.frame_index for layer in s.layers] == [1, 1]
    ref = [gen.session(p, seed=layer_seed(2, j), **P) for j, p in enumerate(["digit 1",
                                                                            "digit 8"])]
    gen.fold(ref, np.zeros((2, 16, 16), np.uint8) + 200)
    assert same(frames(s, 2), [np.maximum.reduce(gen.step(ref)) for _ in range(2)])
    # layers at other frames (guided at frame 0 only) fold together too
    late = gen.session("digit 3", seed=1, layers="digits", steps=1, first_guidance=3.0)
    frames(late, 1)
    late.set_prompt("digits 3 and 4")
    gen.fold([late], np.zeros((1, 16, 16), np.uint8))
    assert [layer.frame_index for layer in late.layers] == [2, 1]
    with pytest.raises(ValueError, match="twice"):
        gen.step([late, late.layers[0]])


def test_snapshots_that_cannot_be_restored(gen):
    import json
    import struct

    from pomstream.model.layers import LAYERS_MAGIC

    s = gen.session("digits 2 and 9", seed=4, layers="digits", **P)
    frames(s, 1)
    snap = s.snapshot()
    n = struct.unpack("<I", snap[8:12])[0]
    header, rest = json.loads(snap[12 : 12 + n]), snap[12 + n :]

    def edited(**change):
        head = json.dumps({**header, **change}).encode()
        return LAYERS_MAGIC + struct.pack("<I", len(head)) + head + rest

    for change in ({"created": 1}, {"prompt": "digits 5 and 6"}, {"prompt": "a cat"},
                   {"prompt": None}, {"frame_index": -1}, {"seed": -2}, {"digits": [2]}):
        with pytest.raises(SnapshotError):
            gen.restore(edited(**change))
    assert gen.restore(edited()).frame_index == 1
    nested = s.snapshot()
    head = json.dumps({**header, "layers": [len(nested)], "digits": [None],
                       "prompt": ""}).encode()
    with pytest.raises(SnapshotError, match="inside"):
        gen.restore(LAYERS_MAGIC + struct.pack("<I", len(head)) + head + nested)
    with pytest.raises(SnapshotError, match="corrupt"):
        gen.restore(LAYERS_MAGIC + struct.pack("<I", 3) + b"[[[" + rest)


def test_refused_settings(tiny_model, gen):
    with pytest.raises(ValueError, match="digits grammar"):
        StreamGenerator(tiny_model).session("digits 1 and 2", layers="digits")
    with pytest.raises(ValueError, match="layers must be one of"):
        gen.session("digit 1", layers="pixels")
    with pytest.raises(ValueError, match=">= 0"):
        gen.session("digits 1 and 2", seed=-1, layers="digits")
