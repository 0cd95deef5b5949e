"""The demo model's training recipe: prompt grammar and encoder, noise levels and loss
masking, restoring clips, the two-phase schedule, exact resume, frames folded in."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pomstream.model.autoencoder import build_autoencoder
from pomstream.model.config import ModelConfig, get_config
from pomstream.model.data import MovingDigits
from pomstream.model.diffusion import NoiseLevels, flow_loss
from pomstream.model.dit import VideoDiT
from pomstream.model.prompts import PromptError, PromptRules, parse_digit_prompt
from pomstream.model.streaming import StreamGenerator
from pomstream.model.train import TrainArgs, make_batch, step_shape, train

DIGITS = get_config("pom-dit-tiny", prompt_encoder="digits", cond_norm=True)


@pytest.mark.parametrize("text,digits", [
    ("digit 4", [4]), ("digits 3 and 7", [3, 7]), ("digits 1, 4 and 9", [1, 4, 9]),
    ("  Digits 1,4, and 9 ", [1, 4, 9]), ("3 7", [3, 7]), ("5", [5]), ("", []), ("  ", []),
    ("digits 3 and 3", [3, 3])])
def test_digit_grammar_reads(text, digits):
    assert parse_digit_prompt(text) == digits


@pytest.mark.parametrize("text", ["a cat", "digit 12", "digits 1, 2, 3 and 4", "digit",
                                  "digit 3 please", "digits three and seven", "3 and"])
def test_digit_grammar_refuses_with_an_example(text):
    with pytest.raises(PromptError, match="digits 3 and 7"):
        parse_digit_prompt(text)


def test_prompt_rules_check_length_and_grammar():
    assert PromptRules("bytes", 8).check("a cat") == "a cat"
    with pytest.raises(PromptError, match="at most 8"):
        PromptRules("bytes", 8).check("a much longer prompt")
    with pytest.raises(PromptError, match="digits 3 and 7"):
        PromptRules("digits", 64).check("a cat")
    assert DIGITS.prompt_rules.describe()["examples"]
    assert get_config("pom-dit-demo").prompt_rules.encoder == "digits"
    # a model trained on left-to-right prompts says so; one without an order says nothing
    assert "order" not in DIGITS.prompt_rules.describe()
    ordered = get_config("pom-dit-demo", prompt_order="left_to_right").prompt_rules
    assert "left to right" in ordered.describe()["order"]


def test_digit_encoder_separates_digits_and_refuses_text():
    torch.manual_seed(0)
    model = VideoDiT(DIGITS)
    vecs = model.encode_prompts([f"digit {d}" for d in range(10)] + ["", "digits 3 and 7"])
    assert vecs.shape == (12, DIGITS.dim)
    assert torch.cdist(vecs, vecs).fill_diagonal_(1.0).min() > 1e-3  # all distinct
    # the set is read, not the wording
    assert torch.equal(model.encode_prompts(["3 7"]), model.encode_prompts(["digits 3 and 7"]))
    with pytest.raises(PromptError):
        model.encode_prompts(["a cat"])


def test_old_configs_keep_their_fingerprint():
    """Fields added later are left out of the fingerprint at their default: snapshots and
    models made before them still match."""
    cfg = get_config("pom-dit-tiny")
    assert cfg.fingerprint() == "1e669a653845d792"  # its value before prompt_encoder existed
    assert DIGITS.fingerprint() != cfg.fingerprint()
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_byte_encoder_honours_coeff_init():
    model = VideoDiT(get_config("pom-dit-tiny", coeff_init=0.25))
    coeffs = [p for n, p in model.prompt.mixer.named_parameters() if "coeff" in n]
    assert coeffs and max(c.abs().max().item() for c in coeffs) > 0.01


def test_noise_levels_context_and_location():
    g = torch.Generator().manual_seed(0)
    t, ctx = NoiseLevels(clean_level=0.05).sample(4, 6, g, prefix=torch.tensor([0, 2, 5, -1]))
    assert ctx[0].sum() == 0 and ctx[1].tolist() == [True, True] + [False] * 4
    assert ctx[2].sum() == 5 and (t[ctx] < 0.05).all()
    low = NoiseLevels(mean=-2.0, uniform=0.0, clean_prefix_prob=0).sample(2000, 1, g)[0]
    high = NoiseLevels(mean=2.0, uniform=0.0, clean_prefix_prob=0).sample(2000, 1, g)[0]
    assert low.mean() < 0.25 < 0.75 < high.mean()


def test_context_frames_carry_no_loss_when_masked():
    """With context_loss False, what the model gets wrong on context frames costs
    nothing: a zero model's loss ignores the context frames' targets entirely."""
    def zero_model(x, t, cond):
        return torch.zeros_like(x)

    x0 = torch.randn(2, 4, 1, 4, 4)
    wild = x0.clone()
    wild[:, :2] = 1000.0  # the first two frames are context (prefix 2)
    prefix = torch.tensor([2, 2])
    masked = NoiseLevels(context_loss=False)

    def loss(x, levels):
        return flow_loss(zero_model, x, None, torch.Generator().manual_seed(1), levels,
                         prefix).item()

    assert loss(x0, masked) == pytest.approx(loss(wild, masked))
    assert loss(wild, NoiseLevels()) > 100 * loss(x0, NoiseLevels())


def test_restoring_clips():
    data = MovingDigits("train", size=64)
    img = data.images[0]
    frames = data.render(np.random.default_rng(0), [img], 4, starts=[2])
    assert frames[:2].max() == 0 and frames[2:].max() > 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        clip, k = data.restoring(rng, 8)
        assert 1 <= k < 8
        ink = (clip.frames > 64).sum((1, 2))
        assert (ink[k:] > 0).all()  # the target frames are intact
        assert ink[:k].mean() <= ink[k:].mean() + 200  # never more than the real thing
    blanked = [data.restoring(np.random.default_rng(s), 8) for s in range(40)]
    assert any((c.frames[:k] == 0).all() for c, k in blanked)  # some pasts are blank


def test_make_batch_marks_restoring_prefixes():
    cfg = get_config("pom-dit-tiny")
    data = MovingDigits("train", size=cfg.frame_size)
    _, _, prefix = make_batch(data, build_autoencoder(cfg), np.random.default_rng(0), 32, 4,
                              0.0, restore=0.5)
    assert (prefix == -1).any() and (prefix >= 1).any() and (prefix < 4).all()
    _, _, none = make_batch(data, build_autoencoder(cfg), np.random.default_rng(0), 8, 4, 0.0)
    assert (none == -1).all()


def test_two_phase_schedule():
    args = TrainArgs(out="x", batch=4, image_steps=3, image_batch=32, image_every=2)
    shapes = [step_shape(s, args, 8) for s in range(7)]
    assert shapes == [(32, 1)] * 3 + [(32, 1), (4, 8), (32, 1), (4, 8)]
    assert step_shape(0, TrainArgs(out="x", batch=4, image_steps=1), 8) == (32, 1)


def test_new_recipe_resumes_exactly(tmp_path):
    """Both phases, restoring clips and masked context loss: stopping anywhere and
    resuming gives the same weights as running straight through."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = dict(steps=8, batch=2, lr=1e-3, warmup=2, ckpt_every=3, log_every=4, image_steps=3,
                image_batch=4, image_every=2, restore=0.5, t_mean=0.3, t_uniform=0.2,
                context_loss=False)
    train(DIGITS, TrainArgs(out=str(straight), **args))
    for _ in range(5):  # stops after one step each time: in phase 1, across, in phase 2
        train(DIGITS, TrainArgs(out=str(split), max_minutes=1e-9, resume=True, **args))
    train(DIGITS, TrainArgs(out=str(split), resume=True, **args))
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(split / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(split / "train_state.pt", weights_only=False)
    assert state["args"]["restore"] == 0.5 and state["step"] == 8


def test_fold_equals_generated_past():
    """Folding a frame in is what generating it does to the state: a session that made
    frame 0 and one that was given the same frame continue identically."""
    torch.manual_seed(0)
    gen = StreamGenerator(VideoDiT(DIGITS).eval())
    a = gen.session("digit 3", seed=1)
    frame0 = a.next_frame()
    b = gen.session("digit 3", seed=1)
    b.rng.set_state(a.rng.get_state())
    gen.fold([b], frame0[None])
    assert b.frame_index == 1
    # the fold re-encodes the decoded frame, so states match to the autoencoder's error
    assert np.abs(a.next_frame().astype(int) - b.next_frame().astype(int)).mean() < 8


def test_probes_report_every_question():
    from pomstream.model.probes import run_probes

    torch.manual_seed(0)
    gen = StreamGenerator(VideoDiT(DIGITS).eval())
    out = run_probes(gen, seeds=2, stream_videos=2, stream_frames=6, pairs=3, steps=2)
    ff = out["first_frame"]
    assert 0 <= ff["exact"] <= ff["top_guess"] + 1 and 0 <= ff["no_digit"] <= 1
    assert ff["change_across_seeds"] > 0 and len(ff["by_digit_exact"]) == 10
    # real frames: the seed's place moves more pixels than the digit at one place
    assert 0 < ff["real_change_across_prompts"] < ff["real_change_across_seeds"]
    pairs = out["two_digits"]
    assert set(pairs) == {"exact", "recall", "one_of_two", "one_right_one_wrong", "none_right"}
    assert sum(pairs[k] for k in ("one_of_two", "one_right_one_wrong", "none_right")) <= (
        1 - pairs["exact"] + 1e-9)
    for key in ("recovery_blank", "recovery_dimmed"):
        assert 0 <= out[key]["recovered"] <= 1 and out[key]["frames"] == 12
    assert "window_0_6" in out["streams"] and "prompt_accuracy_by_digits" in out["streams"]
