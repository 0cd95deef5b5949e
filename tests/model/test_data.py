import numpy as np
import pytest

from pomstream.model.data import MovingDigits, load_digits, parse_prompt, prompt_for


def test_prompts_roundtrip():
    for digits in ([4], [3, 7], [1, 4, 9], [2, 2]):
        assert parse_prompt(prompt_for(digits)) == digits
    assert prompt_for([3, 7]) == "digits 3 and 7"
    assert parse_prompt("digits 12 and 5") == [5]
    with pytest.raises(ValueError):
        prompt_for([])


def test_splits_are_disjoint_and_complete():
    tr, ytr = load_digits("train")
    te, yte = load_digits("test")
    assert len(tr) == 4500 and len(te) == 500 and tr.dtype == np.uint8
    assert set(ytr) == set(yte) == set(range(10))
    with pytest.raises(ValueError):
        load_digits("validation")


def test_clips_move_and_stay_inside():
    data = MovingDigits("train")
    clip = data.sample(np.random.default_rng(1), 40, digits=[3, 8])
    assert clip.frames.shape == (40, 64, 64) and clip.prompt == "digits 3 and 8"
    mass = clip.frames.reshape(40, -1).astype(float).sum(1)
    assert (mass > 0).all()
    assert np.abs(np.diff(clip.frames.astype(int), axis=0)).mean() > 1  # it moves
    # bouncing keeps every digit fully inside: total ink never drops much
    assert mass.min() > 0.6 * mass.max()
