"""Per-digit layers (``layers="digits"``) against plain sessions run by hand."""

import numpy as np
import pytest

from pomstream.model import SnapshotError, StreamGenerator
from pomstream.model.layers import layer_seed
from pomstream.model.prompts import PromptError, layer_prompts
from tests.support.models import randomized_model

P = dict(steps=2, first_steps=3, guidance=2.0, first_guidance=1.5)


@pytest.fixture(scope="module")
def gen():
    return StreamGenerator(randomized_model(prompt_encoder="digits", cond_norm=True))


def frames(session, n):
    return [session.next_frame() for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_layer_prompts():
    assert layer_prompts("digits 3 and 7") == ["digit 3", "digit 7"]
    assert layer_prompts("digits 1, 4 and 4") == ["digit 1", "digit 4", "digit 4"]
    assert layer_prompts("digit 5") == ["digit 5"]
    assert layer_prompts("") == [""]
    with pytest.raises(PromptError):
        layer_prompts("a cat")


@pytest.mark.parametrize("prompt", ["digit 3", ""])
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
    s.set_prompt("")  # unconditional: every layer goes on
    assert [layer.prompt for layer in s.layers] == ["", ""]
    with pytest.raises(PromptError):
        s.set_prompt("a cat")
    assert [layer.prompt for layer in s.layers] == ["", ""]


def test_fold_goes_into_every_layer(gen):
    s = gen.session("digits 1 and 8", seed=2, layers="digits", **P)
    plain = gen.session("digit 6", seed=2, **P)
    gen.fold([s, plain], np.zeros((2, 16, 16), np.uint8) + 200)
    assert s.frame_index == 1 and [layer.frame_index for layer in s.layers] == [1, 1]
    ref = [gen.session(p, seed=layer_seed(2, j), **P) for j, p in enumerate(["digit 1",
                                                                            "digit 8"])]
    gen.fold(ref, np.zeros((2, 16, 16), np.uint8) + 200)
    assert same(frames(s, 2), [np.maximum.reduce(gen.step(ref)) for _ in range(2)])


def test_refused_settings(tiny_model, gen):
    with pytest.raises(ValueError, match="digits grammar"):
        StreamGenerator(tiny_model).session("digits 1 and 2", layers="digits")
    with pytest.raises(ValueError, match="layers must be one of"):
        gen.session("digit 1", layers="pixels")
