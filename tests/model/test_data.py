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


def test_left_to_right_prompts_name_the_digits_by_their_places():
    """Same frames as without an order; only the prompt's order says where each digit is."""
    ordered, plain = MovingDigits("train", order="left_to_right"), MovingDigits("train")
    for seed in range(20):
        a = ordered.sample(np.random.default_rng(seed), 4, digits=[3, 7, 1])
        b = plain.sample(np.random.default_rng(seed), 4, digits=[3, 7, 1])
        assert np.array_equal(a.frames, b.frames) and b.digits == [3, 7, 1]
        assert sorted(a.digits) == [1, 3, 7] and parse_prompt(a.prompt) == a.digits
        # the images were drawn before the paths: replay the draws to find the places
        rng = np.random.default_rng(seed)
        for d in [3, 7, 1]:
            rng.choice(np.flatnonzero(plain.labels == d))
        _, paths = plain._render(rng, [plain.images[0]] * 3, 4)
        left_edges = {d: x for d, x in zip([3, 7, 1], paths[:, 0, 1], strict=True)}
        assert [left_edges[d] for d in a.digits] == sorted(left_edges.values())


def test_a_digit_that_appears_later_is_placed_where_it_appears():
    data = MovingDigits("train", order="left_to_right")
    clip = data.sample(np.random.default_rng(5), 6, digits=[2, 9], starts=[0, 4])
    rng = np.random.default_rng(5)
    for d in [2, 9]:
        rng.choice(np.flatnonzero(data.labels == d))
    _, paths = data._render(rng, [data.images[0]] * 2, 6, [0, 4])
    x = dict(zip([2, 9], paths[:, 4, 1], strict=True))  # frame 4: both on screen
    assert clip.digits == sorted([2, 9], key=x.get)
    with pytest.raises(ValueError, match="order"):
        MovingDigits("train", order="top_down")
