"""FrameStep: bucket padding (and CUDA graphs on a GPU) give what model.step gives."""

import pytest
import torch

from pomstream.model import StreamGenerator
from pomstream.model.frame_step import FrameStep
from tests.support.models import randomized_model


def inputs(model, n, device="cpu", dtype=torch.float64, frames_done=2):
    """A batch of n sessions at different points: states built from real frames."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(n)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    cond = rnd(n, cfg.dim)
    states = model.empty_states(n, device, dtype)
    for _ in range(frames_done):
        _, states = model.step(rnd(n, cfg.channels, cfg.frame_size, cfg.frame_size),
                               torch.zeros(n, device=device, dtype=dtype), cond, states)
    x = rnd(n, cfg.channels, cfg.frame_size, cfg.frame_size)
    t = torch.rand(n, generator=g, dtype=torch.float64).to(device, dtype)
    return x, t, cond, states


def assert_same(got, want, rtol=1e-12, atol=1e-12):
    (v1, s1), (v2, s2) = got, want
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=atol)
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a.total, b.total, rtol=rtol, atol=atol)
        torch.testing.assert_close(a.count, b.count, rtol=rtol, atol=atol)


@pytest.mark.parametrize("temporal", ["global", "per_position"])
@pytest.mark.parametrize("n", [1, 3, 5, 9])
def test_padded_buckets_equal_plain_step(temporal, n):
    model = randomized_model(temporal_mixer=temporal)
    step = FrameStep(model, graphs=False, pad=True, buckets=(1, 4, 8))
    args = inputs(model, n)
    got = step(*args)
    assert got[0].shape[0] == n and all(s.total.shape[0] == n for s in got[1])
    assert_same(got, model.step(*args))  # n = 9: above the largest bucket, eager


def test_generator_frames_unchanged_by_padding():
    model = randomized_model(dtype=torch.float32)
    plain, padded = StreamGenerator(model), StreamGenerator(model)
    padded.frame_step = FrameStep(model, graphs=False, pad=True, buckets=(4, 8))
    for gen in (plain, padded):
        sessions = [gen.session(f"digit {i}", seed=i, steps=2, guidance=2.0) for i in range(3)]
        gen.frames = [gen.step(sessions) for _ in range(3)]
    for a, b in zip(plain.frames, padded.frames, strict=True):
        for fa, fb in zip(a, b, strict=True):
            assert (fa.astype(int) - fb.astype(int)).__abs__().max() <= 1


def test_arguments_are_checked():
    model = randomized_model()
    with pytest.raises(ValueError, match="CUDA"):
        FrameStep(model, graphs=True)
    with pytest.raises(ValueError, match="buckets"):
        FrameStep(model, buckets=(4, 2))
    assert FrameStep(model, buckets=(1, 8)).bucket(3) == 8
    assert FrameStep(model, buckets=(1, 8)).bucket(9) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("kernels", ["reference", "triton"])
def test_cuda_graphs_equal_eager(kernels, monkeypatch):
    monkeypatch.setenv("POMSTREAM_KERNELS", kernels)
    model = randomized_model(temporal_mixer="per_position", dtype=torch.float32).cuda()
    step = FrameStep(model, graphs=True, buckets=(2, 4))
    for n in (1, 3, 2, 3):  # capture, replay with other rows, another bucket, replay again
        args = inputs(model, n, "cuda", torch.float32)
        assert_same(step(*args), model.step(*args), rtol=1e-4, atol=1e-5)
    assert step.captured == [2, 4]
