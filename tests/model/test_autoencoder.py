"""The latent autoencoder: shipped weights reconstruct held-out digits, latents are
normalised, a model refuses an autoencoder it was not trained with, training works."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from pomstream.model import StreamGenerator, load_model, save_model
from pomstream.model.autoencoder import (
    WEIGHTS_DIR,
    ConvAutoencoder,
    PixelAutoencoder,
    build_autoencoder,
    train_conv_autoencoder,
)
from pomstream.model.classifier import load_classifier
from pomstream.model.config import ModelConfig, get_config
from pomstream.model.data import MovingDigits
from pomstream.model.dit import VideoDiT
from pomstream.model.metrics import score_video

DEMO = get_config("pom-dit-demo")
# a tiny latent model: 16x16 frames -> 4 x 4 x 4 latents, patch 2 -> 4 tokens a frame
TINY_LATENT = get_config("pom-dit-tiny", autoencoder="conv-f4", patch=2, channels=1)


@pytest.fixture(scope="module")
def ae():
    return build_autoencoder(DEMO)


def test_shipped_weights_are_small_and_registered(ae):
    path = WEIGHTS_DIR / "autoencoder-conv-f4.safetensors"
    assert path.stat().st_size < 1_000_000
    assert isinstance(ae, ConvAutoencoder)
    assert ae.latent_shape == DEMO.latent_shape == (4, 16, 16)
    assert isinstance(build_autoencoder(get_config("pom-dit-tiny")), PixelAutoencoder)


def test_held_out_digits_survive_the_round_trip(ae):
    # digits neither the autoencoder nor the classifier saw: the classifier must read the
    # reconstruction as well as the original
    clf = load_classifier()
    data = MovingDigits("test")
    rng = np.random.default_rng(1)
    clips = [data.sample(rng, 8) for _ in range(12)]
    orig, back = [], []
    for clip in clips:
        z = ae.encode(clip.frames)
        assert z.shape == (8, 4, 16, 16) and z.dtype == torch.float32
        rec = ae.decode(z)
        assert rec.shape == (8, 64, 64, 3) and rec.dtype == np.uint8
        ink = clip.frames > 64
        err = np.abs(rec[..., 0].astype(float) - clip.frames)
        assert err[ink].mean() < 40, err[ink].mean()  # strokes kept
        assert err[~ink].mean() < 8, err[~ink].mean()  # background stays black
        orig.append(score_video(clip.frames, clip.digits, clf)["digit_recall"])
        back.append(score_video(rec, clip.digits, clf)["digit_recall"])
    print("digit recall, originals / reconstructions:", np.mean(orig), np.mean(back))
    assert np.mean(back) >= np.mean(orig) - 0.1, (orig, back)


def test_latents_are_normalised(ae):
    data = MovingDigits("test")
    rng = np.random.default_rng(2)
    z = ae.encode(np.stack([data.sample(rng, 1).frames[0] for _ in range(256)]))
    mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
    assert torch.all(mean.abs() < 0.3), mean
    assert torch.all((std > 0.7) & (std < 1.4)), std


def test_rgb_input_is_averaged(ae):
    frames = MovingDigits("test").sample(np.random.default_rng(3), 2).frames
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    torch.testing.assert_close(ae.encode(rgb), ae.encode(frames))


def test_config_checks():
    with pytest.raises(ValueError, match="unknown autoencoder"):
        ModelConfig(autoencoder="vae-xl")
    assert ModelConfig(autoencoder="conv-f4", patch=8, frame_size=32).tokens_per_frame == 1
    assert ModelConfig(autoencoder="pixel", patch=8, frame_size=48).tokens_per_frame == 36
    with pytest.raises(ValueError, match="patch 8 must divide the latent side 48 / 4"):
        ModelConfig(autoencoder="conv-f4", patch=8, frame_size=48)
    with pytest.raises(ValueError, match="grayscale"):
        ConvAutoencoder(get_config("pom-dit-tiny", autoencoder="conv-f4", patch=2, channels=3))


def test_model_refuses_another_autoencoder(tmp_path):
    torch.manual_seed(0)
    path = save_model(VideoDiT(TINY_LATENT), tmp_path / "m.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["autoencoder_digest"] == build_autoencoder(TINY_LATENT).digest
    load_model(path)  # the installed autoencoder: fine
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["autoencoder_digest"] = "0" * 16
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ValueError, match="trained with another 'conv-f4' autoencoder"):
        load_model(path)


def test_latent_model_streams_frames_of_the_frame_size():
    torch.manual_seed(0)
    gen = StreamGenerator(VideoDiT(TINY_LATENT).eval())
    session = gen.session("digit 3", seed=0, steps=2)
    frames = [session.next_frame() for _ in range(3)]
    assert all(f.shape == (16, 16, 3) and f.dtype == np.uint8 for f in frames)


@pytest.mark.slow
def test_training_writes_loadable_weights(tmp_path):
    lines = []
    path = tmp_path / "ae.safetensors"
    report = train_conv_autoencoder(path, steps=200, batch=8, width=4, log=lines.append)
    bce = [float(line.split("bce ")[1].split()[0]) for line in lines]
    assert len(bce) == 2 and bce[-1] < bce[0] < 0.7, lines
    assert report["latent_shape"] == [4, 16, 16]
    ae = ConvAutoencoder(DEMO, path)
    assert ae.digest == report["digest"] == json.loads(path.with_suffix(".json").read_text())[
        "digest"]
    frames = MovingDigits("test").sample(np.random.default_rng(0), 2).frames
    assert ae.decode(ae.encode(frames)).shape == (2, 64, 64, 3)
