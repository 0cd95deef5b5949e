import pytest
import torch

from pomstream.model.diffusion import add_noise, guided, make_sampler, sample_levels, shifted


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_samplers_follow_the_exact_flow(name, steps, shift):
    """For one known x0 the exact velocity is (x - x0) / t; both samplers land on x0."""
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return (x - x0) / t.view(-1, 1, 1, 1)

    sampler = make_sampler(name, steps, shift)
    out = sampler.sample(velocity, eps)
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)
    expected_calls = steps if name == "euler" else 2 * steps - 1
    assert len(calls) == expected_calls
    assert all(float(t[0]) > 0 for t in calls)


def test_noise_levels_and_shift():
    x0, eps = torch.zeros(1, 3, 1, 2, 2), torch.ones(1, 3, 1, 2, 2)
    t = torch.tensor([[0.0, 0.5, 1.0]])
    assert add_noise(x0, eps, t)[0, :, 0, 0, 0].tolist() == [0.0, 0.5, 1.0]
    levels = sample_levels(64, 8, torch.Generator().manual_seed(0))
    assert levels.shape == (64, 8) and (levels >= 0).all() and (levels <= 1).all()
    grid = torch.linspace(0, 1, 11)
    s = shifted(grid, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s >= grid).all() and (s.diff() > 0).all()


def test_guidance():
    c, u = torch.full((2, 3), 2.0), torch.ones(2, 3)
    assert torch.equal(guided(c, u, 1.0), c)
    assert torch.equal(guided(c, u, torch.tensor([0.0, 3.0]))[:, 0], torch.tensor([1.0, 4.0]))


def test_bad_sampler_arguments():
    with pytest.raises(ValueError):
        make_sampler("ddim", 4)
    with pytest.raises(ValueError):
        make_sampler("euler", 0)
