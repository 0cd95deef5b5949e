"""Every Triton kernel against its PyTorch reference, forward and backward.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU); on CUDA the same tests run compiled. Shapes are small and odd
(tails in every tile), inputs are fresh random tensors, and every kernel output starts as
NaN (POMSTREAM_KERNEL_POISON=1) so an element a kernel forgets to write fails the test.
"""

import pytest
import torch

from pomstream.kernels import dispatch
from pomstream.kernels.pom import ops
from pomstream.kernels.pom.aggregate import naive as agg
from pomstream.kernels.pom.select import naive as sel
from pomstream.kernels.pom.state_update import naive as upd
from pomstream.model.pom import PoM
from tests.support.models import randomized_model

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not dispatch.interpreting(), reason="CPU kernels need TRITON_INTERPRET=1 (set by "
        "conftest only when no GPU is present)")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device here")),
]
pytestmark = pytest.mark.skipif(dispatch.triton_available() is not None,
                                reason=str(dispatch.triton_available()))


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.setenv("POMSTREAM_KERNELS", "triton")
    monkeypatch.setenv("POMSTREAM_KERNEL_POISON", "1")


def dtypes(device):
    return [torch.float64, torch.float32] + ([torch.bfloat16] if device == "cuda" else [])


def close(got, want, dtype, what=""):
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    assert torch.isfinite(got).all(), f"{what}: non-finite output (unwritten element?)"
    torch.testing.assert_close(got.to(want.dtype), want, rtol=tol, atol=tol * max(
        1.0, want.abs().max().item()), msg=lambda m: f"{what}: {m}")


def context(B, N, E, dtype, device, scale=3.0):
    """hc as a strided slice of a wider projection (as PoM reads it), some values past the
    clamp bounds."""
    wide = torch.randn(B, N, E + 7, device=device, dtype=torch.float64) * scale
    return wide.to(dtype)[..., 3 : 3 + E]


def grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out.backward(g.to(out.device, out.dtype))
    return out.detach(), [x.grad for x in leaves if x.requires_grad]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group,weighted", [(None, False), (None, True), (9, False),
                                            (1, False), (1, True), (45, True)])
@pytest.mark.parametrize("degree", [1, 3])
def test_feature_sums(kernels_on, device, group, weighted, degree):
    for dtype in dtypes(device):
        hc = context(2, 45, 19, dtype, device)
        coeff = torch.randn(19, degree, device=device)
        w = (torch.rand(2, 45, device=device) > 0.3).float() if weighted else None
        def fn(h, c, w=w):
            return ops.feature_sums(h, c, group, w)

        got, got_g = grads(fn, hc, coeff)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("POMSTREAM_KERNELS", "reference")
            want, want_g = grads(fn, hc, coeff)
        close(got, want, dtype, "sums")
        close(got_g[0], want_g[0], dtype, "d hc")
        close(got_g[1], want_g[1], dtype, "d coeff")


@pytest.mark.parametrize("device", DEVICES)
def test_long_sequence_is_split_over_programs(kernels_on, device):
    """A whole-sequence sum split into partials of 256 tokens, with a ragged last one."""
    from pomstream.kernels.pom.aggregate import kernel

    hc = context(1, 1000, 24, torch.float32, device)
    coeff = torch.randn(24, 2, device=device)
    for split in (256, 999, 1000, 4096):
        close(kernel.feature_sums(hc, coeff, None, split=split), agg.feature_sums(hc, coeff),
              torch.float32, f"split {split}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 37, 130])
def test_causal_mean(kernels_on, device, n):
    for dtype in dtypes(device):
        hc = context(2, n, 13, dtype, device)
        coeff = torch.randn(13, 2, device=device)
        got, got_g = grads(ops.causal_mean, hc, coeff)
        want, want_g = grads(agg.causal_mean, hc, coeff)
        close(got, want, dtype, "causal mean")
        close(got_g[0], want_g[0], dtype, "d hc")
        close(got_g[1], want_g[1], dtype, "d coeff")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sessions,tokens,decay", [(5, 3, True), (37, 1, True), (3, 70, False),
                                                   (2, 600, True), (1, 1030, False)])
def test_state_update(kernels_on, device, sessions, tokens, decay):
    E = 21
    for dtype in dtypes(device):
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        hc = context(sessions, tokens, E, dtype, device)
        coeff = torch.randn(E, 3, device=device)
        total = torch.randn(sessions, E, device=device, dtype=state_dtype)
        count = torch.rand(sessions, E if decay else 1, device=device, dtype=state_dtype) * 5
        count[0] = 0  # a fresh session
        gamma = torch.rand(E, device=device) * 0.9 if decay else None
        with torch.no_grad():
            got = ops.state_update(hc, coeff, total, count, gamma)
        want = upd.state_update(hc, coeff, total, count, gamma)
        for g, w, what in zip(got, want, ("hbar", "total", "count"), strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, what
            close(g, w, dtype, what)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,rows,state_rows,batch_state", [
    (4, 33, 1, 2), (4, 11, 3, 2), (20, 1, 33, 2), (20, 11, 3, 1)])
def test_select(kernels_on, device, heads, rows, state_rows, batch_state):
    """Global (one state row), per-frame and per-token states, gates per head or channel."""
    E, T = 20, 33
    for dtype in dtypes(device):
        hs = (torch.randn(2, T, heads + 5, device=device, dtype=torch.float64) * 4).to(dtype)
        hs = hs[..., 2 : 2 + heads]
        bias = torch.randn(2 * heads, device=device, dtype=dtype)[::2]  # strided
        hbar = torch.randn(batch_state, state_rows, E, device=device)
        got, got_g = grads(lambda *a: ops.select(*a, rows), hs, bias, hbar)
        want, want_g = grads(lambda *a: sel.select(*a, rows), hs, bias, hbar)
        close(got, want, dtype, "u")
        for g, w, what in zip(got_g, want_g, ("d hs", "d bias", "d hbar"), strict=True):
            close(g, w, dtype, what)


@pytest.mark.parametrize("device", DEVICES)
def test_state_update_single_count_with_decay(kernels_on, device):
    """A (S, 1) count meets a per-channel decay: it becomes per channel, as in PyTorch."""
    hc = context(3, 4, 10, torch.float32, device)
    coeff, gamma = torch.randn(10, 2, device=device), torch.rand(10, device=device)
    total, count = torch.randn(3, 10, device=device), torch.rand(3, 1, device=device) * 3
    with torch.no_grad():
        got = ops.state_update(hc, coeff, total, count, gamma)
    for g, w in zip(got, upd.state_update(hc, coeff, total, count, gamma), strict=True):
        assert g.shape == w.shape
        close(g, w, torch.float32, "state")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_unsupported_inputs_take_the_reference(kernels_on, device):
    hc = context(2, 0, 6, torch.float32, device)
    coeff = torch.randn(6, 2, device=device)
    assert ops.feature_sums(hc, coeff).shape == (2, 1, 6)
    assert ops.causal_mean(hc, coeff).shape == (2, 0, 6)
    x = context(1, 5, 6, torch.float32, device).requires_grad_()
    w = torch.ones(1, 5, device=device, requires_grad=True)
    with pytest.raises(NotImplementedError, match="token weights"):
        ops.feature_sums(x, coeff, None, w).sum().backward()


def pom_layer(decay, heads, device, dtype):
    layer = PoM(12, degree=3, expand=2, n_sel_heads=heads, temporal_decay=decay)
    with torch.no_grad():
        layer.po_coeff.normal_()
        layer.se_bias.normal_()
        if decay:
            layer.decay_logit.normal_()
    return layer.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [None, "causal", "frame", "frame_causal", "padding", "cross"])
def test_layer_with_kernels_equals_reference(device, mode, monkeypatch):
    """The whole PoM layer, output and every gradient, kernels against reference."""
    monkeypatch.setenv("POMSTREAM_KERNEL_POISON", "1")
    dtype = torch.float64 if device == "cpu" else torch.float32
    layer = pom_layer(mode == "frame_causal", 4, device, dtype)
    x = torch.randn(2, 15, 12, device=device, dtype=dtype)
    kwargs = {"mask": mode, "frame_tokens": 5}
    if mode == "padding":
        mask = torch.rand(2, 15, device=device) > 0.4
        mask[1] = False  # a fully masked sequence: zeros, not NaN
        kwargs = {"mask": mask}
    elif mode == "cross":
        kwargs = {"xc": torch.randn(2, 9, 12, device=device, dtype=dtype),
                  "mask": torch.rand(2, 15, 9, device=device) > 0.5}
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("POMSTREAM_KERNELS", backend)
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        y = layer(xi, **kwargs)
        weights = torch.linspace(-1, 1, y.numel(), device=device, dtype=dtype).view_as(y)
        (y * weights).sum().backward()
        results[backend] = [y.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()]
    for got, want in zip(results["triton"], results["reference"], strict=True):
        close(got, want, dtype, f"mode {mode}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temporal", ["global", "per_position"])
def test_model_streaming_with_kernels_equals_parallel_reference(device, temporal, monkeypatch):
    """Frame by frame through the kernels (state update, select) = the parallel
    frame-causal forward through the reference."""
    monkeypatch.setenv("POMSTREAM_KERNEL_POISON", "1")
    dtype = torch.float64 if device == "cpu" else torch.float32
    model = randomized_model(temporal_mixer=temporal, local_mixer=True).to(device, dtype)
    torch.manual_seed(1)
    frames, cfg = 3, model.cfg
    x = torch.randn(1, frames, cfg.channels, cfg.frame_size, cfg.frame_size, device=device,
                    dtype=dtype)
    t = torch.tensor([[0.0, 0.0, 0.7]], device=device, dtype=dtype)
    cond = torch.randn(1, cfg.dim, device=device, dtype=dtype)
    monkeypatch.setenv("POMSTREAM_KERNELS", "reference")
    want = model(x, t, cond)[:, -1]
    monkeypatch.setenv("POMSTREAM_KERNELS", "triton")
    states = model.empty_states(1, device, dtype)
    for f in range(frames - 1):
        _, states = model.step(x[:, f], t[:, f], cond, states)
    got, _ = model.step(x[:, -1], t[:, -1], cond, states)
    close(got, want, dtype, "streamed frame")


def test_dispatch_switch(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("POMSTREAM_KERNELS", "auto")
    assert not dispatch.use_triton(cpu)  # CPU tensors: the reference, interpreter or not
    monkeypatch.setenv("POMSTREAM_KERNELS", "reference")
    assert not dispatch.use_triton(cpu)
    monkeypatch.setenv("POMSTREAM_KERNELS", "fastest")
    with pytest.raises(ValueError, match="POMSTREAM_KERNELS"):
        dispatch.use_triton(cpu)
    monkeypatch.setenv("POMSTREAM_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dispatch.use_triton(cpu)
    monkeypatch.setenv("POMSTREAM_KERNEL_POISON", "1")
    assert dispatch.new_output((2, 3), torch.float32, "cpu").isnan().all()


def test_reference_is_the_models_maths():
    """The operator references are what model/pom.py computes (one definition of P)."""
    layer = pom_layer(False, 1, "cpu", torch.float64)
    hc = context(2, 10, layer.inner, torch.float64, "cpu")
    torch.testing.assert_close(agg.feature_sums(hc, layer.po_coeff),
                               layer.features(hc).sum(1, keepdim=True))
