"""Training: the loss goes down, checkpoints reload exactly, a resumed run continues."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pomstream.model import load_model
from pomstream.model.autoencoder import build_autoencoder
from pomstream.model.config import get_config
from pomstream.model.data import MovingDigits
from pomstream.model.diffusion import flow_loss
from pomstream.model.dit import VideoDiT
from pomstream.model.train import TrainArgs, make_batch, train

CFG = get_config("pom-dit-tiny")


def fixed_loss(model: VideoDiT) -> float:
    """Loss on one fixed batch with fixed noise: comparable between models."""
    data = MovingDigits("test", size=CFG.frame_size)
    x0, prompts, _ = make_batch(data, build_autoencoder(CFG), np.random.default_rng(0), 16,
                                CFG.train_clip_frames, 0.0)
    with torch.no_grad():
        return flow_loss(model, x0, model.encode_prompts(prompts),
                         torch.Generator().manual_seed(0)).item()


def raw_model(run) -> VideoDiT:
    model = VideoDiT(CFG)
    model.load_state_dict(torch.load(run / "train_state.pt", weights_only=False)["model"])
    return model.eval()


@pytest.mark.parametrize("image_every", [0, 2])
def test_few_steps_lower_the_loss(tmp_path, image_every):
    torch.manual_seed(0)
    before = fixed_loss(VideoDiT(CFG).eval())
    train(CFG, TrainArgs(out=str(tmp_path), steps=60, batch=8, lr=2e-3, warmup=5,
                         ckpt_every=1000, log_every=10, image_every=image_every))
    after = fixed_loss(raw_model(tmp_path))
    assert after < 0.8 * before, (before, after)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_checkpoint_reloads_exactly_and_resume_continues(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = dict(steps=12, batch=2, lr=1e-3, warmup=2, ckpt_every=4, log_every=4)
    train(CFG, TrainArgs(out=str(straight), **args))
    train(CFG, TrainArgs(out=str(split), max_minutes=1e-9, **args))  # stops after one step
    train(CFG, TrainArgs(out=str(split), resume=True, **args))
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the saved file gives the same outputs as the weights it came from
    model = load_model(straight / "model.safetensors")
    ema = VideoDiT(CFG)
    ema.load_state_dict(torch.load(straight / "train_state.pt", weights_only=False)["ema"])
    x = torch.randn(1, 3, CFG.channels, CFG.frame_size, CFG.frame_size)
    t, cond = torch.rand(1, 3), model.encode_prompts(["digit 5"])
    assert torch.equal(model(x, t, cond), ema.eval()(x, t, cond))


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path):
    """Multi-process data parallel training (gloo on CPU, NCCL on GPUs) runs and saves."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "pomstream",
                          "train", "--model", "pom-dit-tiny", "--out", str(tmp_path),
                          "--steps", "4", "--batch", "2", "--log-every", "2", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "model.safetensors").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # rank 0 logs alone
