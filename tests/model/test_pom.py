"""The PoM layer against a naive dense-mask computation, and streaming against parallel."""

import pytest
import torch
import torch.nn.functional as F

from pomstream.model.pom import PoM, PoMState

B, D, L, NF = 2, 8, 5, 4  # frames of L tokens, NF frames
N = L * NF


def make(n_sel_heads=4, decay=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = PoM(D, degree=3, expand=2, n_sel_heads=n_sel_heads, temporal_decay=decay).to(dtype)
    with torch.no_grad():  # coefficients start tiny; make them matter
        layer.po_coeff.normal_()
        layer.se_bias.normal_()
        if decay:
            layer.decay_logit.normal_()
    return layer


def naive(layer: PoM, xq, xc, weights):
    """y from an explicit weight matrix: weights (B, T, N) or (B, T, N, eD)."""
    E = layer.inner
    wc, ws = layer.qc_proj.weight[:E], layer.qc_proj.weight[E:]
    a = torch.clamp(F.leaky_relu(xc @ wc.T, 0.01), -0.1, 6.0)
    p = sum(layer.po_coeff[:, j] * a ** (j + 1) for j in range(layer.degree))  # (B, N, E)
    if weights.ndim == 3:
        weights = weights[..., None].expand(*weights.shape, E)
    total = torch.einsum("btne,bne->bte", weights, p)
    hbar = total / weights.sum(2).clamp_min(1e-300)
    hbar = torch.where(weights.sum(2) > 0, hbar, torch.zeros_like(hbar))
    s = F.hardsigmoid(xq @ ws.T + layer.se_bias)
    gate = s.repeat_interleave(E // s.shape[-1], -1)
    return (gate * hbar) @ layer.ag_proj.weight.T


def frame_of(i):
    return i // L


def dense(mode, layer=None, T=N, n=N):
    w = torch.zeros(B, T, n, dtype=torch.float64)
    for t in range(T):
        for j in range(n):
            if mode is None:
                w[:, t, j] = 1
            elif mode == "causal":
                w[:, t, j] = float(j <= t)
            elif mode == "frame":
                w[:, t, j] = float(frame_of(j) == frame_of(t))
            elif mode == "frame_causal":
                w[:, t, j] = float(frame_of(j) <= frame_of(t))
    if mode == "frame_causal" and layer is not None and layer.temporal_decay:
        gamma = layer.decay()  # (E,)
        dist = torch.tensor([[frame_of(t) - frame_of(j) for j in range(n)] for t in range(T)],
                            dtype=torch.float64).clamp_min(0)
        w = w[..., None] * gamma ** dist[None, ..., None]  # (B, T, N, E)
    return w


@pytest.mark.parametrize("mode", [None, "causal", "frame", "frame_causal"])
@pytest.mark.parametrize("heads", [1, 4])
def test_modes_match_dense(mode, heads):
    layer = make(heads)
    x = torch.randn(B, N, D, dtype=torch.float64)
    got = layer(x, mask=mode, frame_tokens=L)
    torch.testing.assert_close(got, naive(layer, x, x, dense(mode)), rtol=1e-10, atol=1e-12)


def test_frame_causal_decay_matches_dense():
    layer = make(4, decay=True)
    x = torch.randn(B, N, D, dtype=torch.float64)
    got = layer(x, mask="frame_causal", frame_tokens=L)
    torch.testing.assert_close(got, naive(layer, x, x, dense("frame_causal", layer)),
                               rtol=1e-10, atol=1e-12)


def test_padding_mask_and_fully_masked_row():
    layer = make()
    x = torch.randn(B, N, D, dtype=torch.float64)
    mask = torch.rand(B, N) > 0.4
    mask[1] = False  # a sequence with no valid token
    got = layer(x, mask=mask)
    w = mask[:, None, :].expand(B, N, N).double()
    torch.testing.assert_close(got, naive(layer, x, x, w), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got).all() and got[1].abs().max() == 0


def test_cross_mixing_mask():
    layer = make()
    T, n = 7, 11
    xq, xc = torch.randn(B, T, D, dtype=torch.float64), torch.randn(B, n, D, dtype=torch.float64)
    mask = torch.rand(B, T, n) > 0.5
    mask[0, 3] = False  # one query sees nothing
    got = layer(xq, xc, mask=mask)
    torch.testing.assert_close(got, naive(layer, xq, xc, mask.double()), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got).all() and got[0, 3].abs().max() == 0
    # no mask: every query sees every context token
    torch.testing.assert_close(layer(xq, xc), naive(layer, xq, xc, torch.ones(B, T, n).double()),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", [None, "causal", "frame", "frame_causal", "padding", "cross"])
def test_gradcheck(mode):
    """Gradients with respect to the input and to every parameter, float64."""
    layer = make(2, decay=mode == "frame_causal")
    n = t = 6
    xq = torch.randn(1, t, D, dtype=torch.float64, requires_grad=True)
    kwargs = {"mask": mode, "frame_tokens": 2}
    if mode == "padding":
        kwargs = {"mask": torch.tensor([[1, 0, 1, 1, 0, 1]], dtype=torch.bool)}
    elif mode == "cross":
        kwargs = {"xc": torch.randn(1, n, D, dtype=torch.float64),
                  "mask": torch.rand(1, t, n) > 0.3}
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,), kwargs)

    assert torch.autograd.gradcheck(fn, (xq, *params))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def stream(layer, x, sizes):
    out, state, i = [], None, 0
    for m in sizes:
        y, state = layer.state_forward(x[:, i : i + m], state)
        out.append(y)
        i += m
    assert i == x.shape[1]
    return torch.cat(out, 1), state


def block_causal(sizes):
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return (ids[None, :, None] >= ids[None, None, :]).expand(B, len(ids), len(ids)).double()


def test_stream_one_token_chunks_equal_causal():
    layer = make()
    x = torch.randn(B, N, D, dtype=torch.float64)
    y, _ = stream(layer, x, [1] * N)
    assert rel_err(y, layer(x, mask="causal")) < 1e-9


def test_stream_uneven_chunks_equal_block_causal():
    layer = make()
    sizes = [3, 1, 7, 2, 5, 2]
    x = torch.randn(B, sum(sizes), D, dtype=torch.float64)
    y, state = stream(layer, x, sizes)
    assert rel_err(y, naive(layer, x, x, block_causal(sizes))) < 1e-9
    # the state is the token-weighted sum: its mean is the global mean of the features
    assert torch.allclose(state.count, torch.full_like(state.count, sum(sizes)))


@pytest.mark.parametrize("decay", [False, True])
def test_stream_frames_equal_frame_causal(decay):
    layer = make(decay=decay)
    x = torch.randn(B, N, D, dtype=torch.float64)
    y, _ = stream(layer, x, [L] * NF)
    assert rel_err(y, layer(x, mask="frame_causal", frame_tokens=L)) < 1e-9


def test_state_cat_split_roundtrip():
    layer = make(decay=True)
    x = torch.randn(3, L, D, dtype=torch.float64)
    _, st = layer.state_forward(x)
    parts = st.split()
    assert len(parts) == 3 and parts[1].total.shape == (1, layer.inner)
    back = PoMState.cat(parts)
    assert torch.equal(back.total, st.total) and torch.equal(back.count, st.count)


def test_reference_parameter_layout():
    dim, e = 16, 2
    multi = PoM(dim, degree=2, expand=e, n_sel_heads=4)
    single = PoM(dim, degree=3, expand=e, n_sel_heads=1)
    shapes = {k: tuple(v.shape) for k, v in multi.state_dict().items()}
    assert shapes == {"qc_proj.weight": (e * dim + 4, dim), "se_bias": (4,),
                      "po_coeff": (e * dim, 2), "ag_proj.weight": (dim, e * dim)}
    assert single.qc_proj.weight.shape == (2 * e * dim, dim)
    assert single.se_bias.shape == (e * dim,) and single.po_coeff.shape == (e * dim, 3)
    assert multi.po_coeff.abs().max() <= 1e-3  # coefficients start tiny
    # weights saved under the reference names load as they are
    single.load_state_dict({k: torch.randn_like(v) for k, v in single.state_dict().items()})


def test_bad_arguments():
    layer = make()
    x = torch.randn(B, N, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="frame_tokens"):
        layer(x, mask="frame_causal", frame_tokens=3)
    with pytest.raises(ValueError, match="unknown mask"):
        layer(x, mask="diagonal")
    with pytest.raises(ValueError, match="fits neither"):
        layer(x, mask=torch.ones(B, N + 1, dtype=torch.bool))
    with pytest.raises(TypeError):
        layer(x, mask=torch.ones(B, N))
    with pytest.raises(ValueError):
        PoM(10, n_sel_heads=3)
