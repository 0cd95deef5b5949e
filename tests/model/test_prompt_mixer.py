"""The prompt's digit tokens and the blocks' cross-PoM over them, and growing a trained
model into one that has it (``train --init-from``)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pomstream.model.config import get_config
from pomstream.model.dit import VideoDiT, split_cond
from pomstream.model.grow import grow_into
from pomstream.model.streaming import StreamGenerator
from pomstream.model.train import TrainArgs, train
from tests.support.models import randomized_model

PLAIN = get_config("pom-dit-tiny", prompt_encoder="digits", cond_norm=True)
MIXER = get_config("pom-dit-tiny", prompt_encoder="digits", cond_norm=True, prompt_mixer=True)


def same_up_to_rounding(a, b):
    """Equal but for float32 rounding: two models with the same weights in other tensors
    need not be bitwise equal on every CPU (the BLAS may sum in another order: 1.4e-6 seen
    on a 2-core AMD EPYC, 0 on an Intel Xeon)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_digit_tokens_name_each_digit_and_pad_with_zeros():
    model = VideoDiT(MIXER)
    cond = model.encode_prompts(["digit 4", "digits 3 and 3", "digits 1, 4 and 9", ""])
    assert cond.shape == (4, 4, MIXER.dim)
    pooled, tokens, present = split_cond(cond)
    assert pooled.shape == (4, MIXER.dim)
    assert present.tolist() == [[True, False, False], [True, True, False],
                                [True, True, True], [False, False, False]]
    assert torch.equal(tokens[1, 0], tokens[1, 1])  # "3 and 3": the same digit twice
    assert torch.equal(tokens[0, 0], tokens[2, 1])  # the 4 of both prompts
    assert not tokens[~present].any()  # padding is exactly zero: the mask reads it
    # the pooled part is what a model without the mixer computes from the same weights
    plain = VideoDiT(PLAIN)
    grow_into(model, plain.state_dict())
    assert torch.equal(split_cond(model.encode_prompts(["digits 2 and 5"]))[0],
                       plain.encode_prompts(["digits 2 and 5"]))


def test_the_cross_pom_reads_only_the_digits_named():
    model = randomized_model(prompt_encoder="digits", prompt_mixer=True)
    x = torch.randn(1, 2, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(1, 2, dtype=torch.float64)

    def velocity(prompt):
        return model(x, t, model.encode_prompts([prompt]))

    before_3, before_empty = velocity("digits 3 and 7"), velocity("")
    with torch.no_grad():
        model.prompt.token.weight[5].add_(1.0)  # a digit neither prompt names
    assert torch.equal(velocity("digits 3 and 7"), before_3)
    assert torch.equal(velocity(""), before_empty)  # no tokens: the branch adds nothing
    with torch.no_grad():
        model.prompt.token.weight[7].add_(1.0)  # one the prompt names
    assert not torch.allclose(velocity("digits 3 and 7"), before_3)
    # swapping the order of the digits changes nothing: a set of tokens, averaged
    assert torch.allclose(velocity("digits 7 and 3"), velocity("digits 3 and 7"), atol=1e-12)


def test_a_grown_model_computes_what_its_source_did():
    """New branch gated off (its own adaLN layer, zero at start): same velocities, same
    frames."""
    source = randomized_model(prompt_encoder="digits", cond_norm=True).float()
    grown = VideoDiT(MIXER).eval()
    new = grow_into(grown, source.state_dict())
    assert {"prompt.token.weight", "blocks.0.cross_ada.weight",
            "blocks.1.cross.po_coeff"} <= set(new)
    assert not any(name.startswith("blocks.0.ada") for name in new)
    x, t = torch.randn(2, 3, 1, 16, 16), torch.rand(2, 3)
    prompts = ["digits 3 and 7", ""]
    same_up_to_rounding(grown(x, t, grown.encode_prompts(prompts)),
                        source(x, t, source.encode_prompts(prompts)))
    frames = []
    for model in (source, grown):
        gen = StreamGenerator(model)
        session = gen.session("digits 1 and 8", seed=3, steps=2, guidance=3.0)
        frames.append([session.next_frame() for _ in range(3)])
    assert all((a == b).all() for a, b in zip(*frames, strict=True))


def test_models_that_do_not_nest_are_refused():
    mixer = VideoDiT(MIXER)
    with pytest.raises(ValueError, match="lacks"):
        grow_into(VideoDiT(PLAIN), mixer.state_dict())  # shrinking
    wider = VideoDiT(get_config("pom-dit-tiny", prompt_encoder="digits", dim=48))
    with pytest.raises(ValueError, match="in the source"):
        grow_into(mixer, wider.state_dict())


def test_init_from_starts_where_the_source_run_ended_and_resumes_exactly(tmp_path):
    base = dict(batch=2, lr=1e-3, warmup=2, log_every=2, image_every=2, image_batch=4,
                restore=0.5, t_mean=0.3, t_uniform=0.2, context_loss=False)
    source = tmp_path / "source"
    train(PLAIN, TrainArgs(out=str(source), steps=3, ckpt_every=3, **base))
    src_state = str(source / "train_state.pt")
    # zero steps: the grown run's EMA model is the source's EMA, new branch off
    start = tmp_path / "start"
    train(MIXER, TrainArgs(out=str(start), steps=0, init_from=src_state, **base))
    old, new = load_file(str(source / "model.safetensors")), load_file(
        str(start / "model.safetensors"))
    assert all(torch.equal(new[k], v) for k, v in old.items())
    assert not new["blocks.0.cross_ada.weight"].any()
    note = json.loads((start / "log.jsonl").read_text().splitlines()[0])
    assert note["init_from"] == src_state and "prompt.token.weight" in note["new"]
    # then trains (new tensors 10x faster), and stopping and resuming changes nothing
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = dict(steps=5, ckpt_every=2, init_from=src_state, new_lr_mult=10.0, **base)
    train(MIXER, TrainArgs(out=str(straight), **args))
    for _ in range(3):
        train(MIXER, TrainArgs(out=str(split), max_minutes=1e-9, resume=True, **args))
    train(MIXER, TrainArgs(out=str(split), resume=True, **args))
    a, b = load_file(str(straight / "model.safetensors")), load_file(
        str(split / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["blocks.0.cross_ada.weight"].any()  # the gate opened
    state = torch.load(split / "train_state.pt", weights_only=False)
    groups = state["opt"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert len(groups[1]["params"]) == len(state["new_params"]) == len(note["new"])
    # the new group's steps were 10x larger: compare with a run at the plain rate
    slow = tmp_path / "slow"
    train(MIXER, TrainArgs(out=str(slow), **{**args, "new_lr_mult": 1.0}))
    slow_w = torch.load(slow / "train_state.pt", weights_only=False)["model"]
    fast_w = state["model"]
    key = "blocks.0.cross_ada.weight"
    assert fast_w[key].abs().max() > 3 * slow_w[key].abs().max()


def test_init_from_a_missing_file_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pomstream", "train", "--model",
                          "pom-dit-tiny", "--set", "prompt_encoder=digits",
                          "--set", "prompt_mixer=true", "--out", str(tmp_path / "run"),
                          "--steps", "1", "--init-from", str(tmp_path / "none.pt")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "none.pt does not exist" in res.stderr


def test_the_mixer_needs_the_digit_encoder():
    with pytest.raises(ValueError, match="prompt_mixer needs"):
        get_config("pom-dit-tiny", prompt_mixer=True)


def test_a_count_only_pooled_vector_leaves_the_digits_to_the_tokens():
    model = randomized_model(prompt_encoder="digits", prompt_mixer=True, prompt_pooled="count")
    assert model.prompt.digit is None  # no digit vectors in the pooled path to train
    pooled, tokens, _ = split_cond(model.encode_prompts(["digits 0 and 5", "digits 3 and 7",
                                                         "digit 3"]))
    assert torch.equal(pooled[0], pooled[1])  # same count, same vector
    assert not torch.equal(pooled[0], pooled[2])  # the count is still read
    assert not torch.equal(tokens[0], tokens[1])
    x = torch.randn(1, 2, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(1, 2, dtype=torch.float64)
    v = [model(x, t, model.encode_prompts([p])) for p in ("digits 0 and 5", "digits 3 and 7")]
    assert not torch.allclose(v[0], v[1])  # the digits reach the frame through the tokens
    with pytest.raises(ValueError, match="needs prompt_mixer"):
        get_config("pom-dit-tiny", prompt_encoder="digits", prompt_pooled="count")
    with pytest.raises(ValueError, match="'set' or 'count'"):
        get_config("pom-dit-tiny", prompt_encoder="digits", prompt_pooled="digits")


def test_a_run_saved_before_a_config_field_existed_resumes(tmp_path):
    """Its state's config JSON lacks prompt_mixer (added later): it means the default."""
    args = dict(batch=2, lr=1e-3, warmup=2, log_every=2, image_every=2, image_batch=4,
                ckpt_every=2)
    train(PLAIN, TrainArgs(out=str(tmp_path), steps=2, **args))
    path = tmp_path / "train_state.pt"
    state = torch.load(path, weights_only=False)
    old = json.loads(state["config"])
    del old["prompt_mixer"]
    state["config"] = json.dumps(old, sort_keys=True)
    torch.save(state, path)
    train(PLAIN, TrainArgs(out=str(tmp_path), steps=3, resume=True, **args))
    assert torch.load(path, weights_only=False)["step"] == 3
    with pytest.raises(ValueError, match="another config"):
        train(MIXER, TrainArgs(out=str(tmp_path), steps=4, resume=True, **args))


def test_an_ordered_encoder_reads_which_digit_is_named_where():
    cfg = dict(prompt_encoder="digits", cond_norm=True, prompt_mixer=True)
    ordered = randomized_model(prompt_order="left_to_right", **cfg)
    for places in (ordered.prompt.placed.weight, ordered.prompt.place.weight):
        with torch.no_grad():
            places.normal_()  # trained: not the zeros they start at
    cond = ordered.encode_prompts(["digits 3 and 7", "digits 7 and 3", "digit 3", ""])
    pooled, tokens, mask = split_cond(cond)
    assert not torch.allclose(pooled[0], pooled[1])  # same set, other places
    assert not torch.allclose(tokens[0, 0], tokens[1, 1])  # the 3, first or second
    assert mask.tolist()[2:] == [[True, False, False], [False] * 3]  # padding stays zero
    assert torch.equal(tokens[3], torch.zeros_like(tokens[3]))
    # a model without places grows into one that computes the same (places start at 0)
    source = randomized_model(**cfg).float()
    grown = VideoDiT(get_config("pom-dit-tiny", prompt_order="left_to_right", **cfg)).eval()
    assert set(grow_into(grown, source.state_dict())) == {"prompt.placed.weight",
                                                          "prompt.place.weight"}
    x, t = torch.randn(2, 3, 1, 16, 16), torch.rand(2, 3)
    prompts = ["digits 3 and 7", ""]
    same_up_to_rounding(grown(x, t, grown.encode_prompts(prompts)),
                        source(x, t, source.encode_prompts(prompts)))
    with pytest.raises(ValueError, match="prompt_order needs"):
        get_config("pom-dit-tiny", prompt_order="left_to_right")
