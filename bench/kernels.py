"""PoM kernels and GPU frame step against their baselines: one command, a table, JSON.

    python -m pomstream.bench.kernels --json bench/results/kernels-<card>.json   # on a GPU, bf16
    python -m pomstream.bench.kernels --quick                                    # CPU smoke run
    pomstream bench kernels ...                                        # the same

Sections (``--sections``, all by default), every number a median of timed repeats
(CUDA events on a GPU), every variant measured side by side in one process:

- ``layer``: one PoM layer (D = 1,152, degree 2, expansion 2, 16 selection heads),
  forward and forward + backward, N = 1K to 128K tokens, batch 1 and 8, masks global,
  frame-causal (frames of 1,024 tokens) and padding. Columns: the Triton kernels, the
  reference (plain PyTorch, eager), ``torch.compile`` of the plain form, attention
  (fused qkv + ``scaled_dot_product_attention`` + output projection, 16 heads; causal for
  the frame-causal row, no attention for padding) and the floor estimate
  ``flops / peak + bytes / bandwidth`` (GEMM flops, reading x and writing y once).
- ``context``: one frame of 1,024 tokens after f earlier frames, one layer: PoM reading
  its state against attention reading a KV cache of f frames, with the bytes each keeps.
- ``frame_step``: the XL-sized model (28 blocks, D = 1,152, 1,024 tokens a frame, one
  temporal PoM per block as in the anchors of ``docs/performance.md``; random weights),
  one network pass of one frame for 1, 8 and 32 batched sessions: eager reference,
  compile + CUDA graph of the reference (the baseline to beat), kernels + CUDA graph
  (``model.frame_step.FrameStep``, what the server runs). Achieved FLOP/s.
- ``streaming``: that model generating video (4 Euler steps + the state pass a frame,
  through ``StreamGenerator``): frames/s for 1 stream and summed over 32, frame 10 vs the
  last frame.
- ``train``: a training step (forward, backward, AdamW) of an XL-sized stack on 16-frame
  clips, PoM (frame-causal) against the same stack with flash attention (causal).

Peaks for the floor: ``--peak-tflops`` and ``--peak-tbps`` (default: the measured H200
anchors of ``docs/performance.md``, 790 TFLOP/s and 4.3 TB/s; recorded in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import statistics
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pomstream.bench.frame_step import DTYPES, run_model
from pomstream.bench.machine import describe, sync, write_json
from pomstream.kernels import dispatch
from pomstream.model.config import get_config
from pomstream.model.dit import VideoDiT
from pomstream.model.frame_step import FrameStep
from pomstream.model.pom import PoM, PoMState

SECTIONS = ("layer", "context", "frame_step", "streaming", "train")


# -- timing ---------------------------------------------------------------------------------

def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int,
            budget_s: float | None = None) -> float:
    """Median milliseconds of ``fn`` (after ``warmup`` calls); with ``budget_s``, fewer
    repeats (at least 3) when ``reps`` of them would take longer than that."""
    for _ in range(warmup):
        fn()
    sync(device)
    if budget_s is not None:
        t0 = time.perf_counter()
        fn()
        sync(device)
        one = time.perf_counter() - t0
        reps = max(3, min(reps, int(budget_s / max(one, 1e-9))))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


@contextlib.contextmanager
def kernels(mode: str):
    """POMSTREAM_KERNELS=mode inside the block."""
    old = os.environ.get("POMSTREAM_KERNELS")
    os.environ["POMSTREAM_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("POMSTREAM_KERNELS", None)
        else:
            os.environ["POMSTREAM_KERNELS"] = old


def attempt(fn: Callable[[], float]) -> float | str:
    """A timing, or the error that prevented it (recorded, not fatal)."""
    try:
        return round(fn(), 4)
    except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the run
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return f"error: {type(exc).__name__}: {str(exc)[:200]}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.on_gpu = self.device.type == "cuda"
        self.kernels_ok = self.on_gpu and dispatch.triton_available() is None
        self.compile_ok = (self.on_gpu or args.compile_on_cpu) and not args.no_compile
        self.peak_flops, self.peak_bw = args.peak_tflops * 1e12, args.peak_tbps * 1e12

    def t(self, fn):
        return time_ms(fn, self.device, self.args.reps, self.args.warmup,
                       self.args.seconds_per_variant)

    def skip_reason(self, what: str) -> str | None:
        if what == "kernels" and not self.kernels_ok:
            return "skipped: kernels run on CUDA only (CPU: tests use the interpreter)"
        if what == "compile" and not self.compile_ok:
            return ("skipped: --no-compile" if self.args.no_compile
                    else "skipped: torch.compile on CPU (use --compile-on-cpu)")
        return None

    # -- layer -----------------------------------------------------------------------------
    def layer(self) -> list[dict]:
        a, D = self.args, self.args.dim
        pom = PoM(D, degree=2, expand=2, n_sel_heads=a.heads).to(self.device, self.dtype)
        with torch.no_grad():
            pom.po_coeff.normal_(0, 0.1)
        attn = Attention(D, a.heads).to(self.device, self.dtype)
        rows, table = [], Table()
        for batch in a.batches:
            for n in a.tokens:
                if batch * n > a.max_batch_tokens:
                    continue
                x = torch.randn(batch, n, D, device=self.device, dtype=self.dtype)
                for mode in ("global", "frame_causal", "padding"):
                    row = self._layer_row(pom, attn, x, mode)
                    rows.append(row)
                    table.add(row)
        return rows

    def _layer_row(self, pom: PoM, attn: Attention, x: torch.Tensor, mode: str) -> dict:
        batch, n, D = x.shape
        kw: dict = {"mask": None}
        if mode == "frame_causal":
            kw = {"mask": "frame_causal", "frame_tokens": min(self.args.frame_tokens, n)}
        elif mode == "padding":
            m = torch.ones(batch, n, dtype=torch.bool, device=self.device)
            m[:, n - n // 10:] = False
            kw = {"mask": m}
        row = {"mode": mode, "batch": batch, "tokens": n, "dim": D}
        flops = 2 * batch * n * (D * (pom.inner + pom.n_sel) + pom.inner * D)
        bytes_ = 2 * batch * n * D * x.element_size() + sum(
            p.numel() * p.element_size() for p in pom.parameters())
        row["floor_fwd_ms"] = round(1e3 * (flops / self.peak_flops + bytes_ / self.peak_bw), 4)
        row["floor_fwd_bwd_ms"] = round(3 * row["floor_fwd_ms"], 4)
        compile_reason = self.skip_reason("compile") or (
            None if batch in self.args.compile_batches and (
                not self.args.compile_tokens or n in self.args.compile_tokens)
            else "skipped: --compile-batches / --compile-tokens")
        variants = {
            "kernels": ("triton", functools.partial(pom, **kw), self.skip_reason("kernels")),
            "reference": ("reference", functools.partial(pom, **kw), None),
            "compiled": ("reference", None if compile_reason else compiled_layer(pom, kw),
                         compile_reason),
            "attention": ("reference", functools.partial(attn, causal=mode == "frame_causal"),
                          "n/a" if mode == "padding" else None),
        }
        for name, (backend, fn, reason) in variants.items():
            for backward in (False, True):
                key = f"{name}_{'fwd_bwd' if backward else 'fwd'}_ms"
                if reason:
                    row[key] = reason
                    continue
                with kernels(backend):
                    row[key] = attempt(lambda f=fn, b=backward: self.t(
                        functools.partial(run_layer, f, x, b)))
        for module in (pom, attn):
            module.zero_grad(set_to_none=True)
        return row

    # -- context ---------------------------------------------------------------------------
    def context(self) -> list[dict]:
        a, D = self.args, self.args.dim
        L = a.frame_tokens
        pom = PoM(D, degree=2, expand=2, n_sel_heads=a.heads).to(self.device, self.dtype)
        attn = Attention(D, a.heads).to(self.device, self.dtype)
        x = torch.randn(1, L, D, device=self.device, dtype=self.dtype)
        rows, table = [], Table()
        for f in a.context_frames:
            with torch.no_grad():
                row = self._context_row(pom, attn, x, f)
            rows.append(row)
            table.add(row)
        return rows

    def _context_row(self, pom: PoM, attn: Attention, x: torch.Tensor, f: int) -> dict:
        L, D = x.shape[1], x.shape[2]
        state = PoMState(torch.randn(1, pom.inner, device=self.device),
                         torch.full((1, 1), float(f * L), device=self.device))
        row: dict = {"earlier_frames": f, "tokens_per_frame": L}
        for name, backend in (("kernels", "triton"), ("reference", "reference")):
            reason = self.skip_reason("kernels") if name == "kernels" else None
            if reason:
                row[f"pom_{name}_ms"] = reason
                continue
            with kernels(backend):
                row[f"pom_{name}_ms"] = attempt(lambda: self.t(
                    functools.partial(pom.state_forward, x, state)))
        row["pom_state_bytes"] = (pom.inner + 1) * 4
        kv_bytes = 2 * f * L * D * x.element_size()  # what earlier frames leave behind
        row["attention_kv_bytes"] = kv_bytes
        if kv_bytes > self.args.max_kv_gib * 2**30:
            row["attention_ms"] = f"skipped: KV cache over --max-kv-gib {self.args.max_kv_gib}"
            return row
        kv = torch.randn(2, 1, (f + 1) * L, D, device=self.device, dtype=self.dtype)
        row["attention_ms"] = attempt(lambda: self.t(
            functools.partial(attn.with_cache, x, kv[0], kv[1], f * L)))
        return row

    # -- frame step ------------------------------------------------------------------------
    def xl_model(self) -> VideoDiT:
        torch.manual_seed(0)
        cfg = get_config(self.args.model, **self.args.model_overrides)
        return VideoDiT(cfg).to(self.device, self.dtype).eval().requires_grad_(False)

    def frame_step(self) -> dict:
        a = self.args
        model = self.xl_model()
        cfg = model.cfg
        flops_per_session = step_flops(model)
        out = {"model": cfg.name, "overrides": a.model_overrides,
               "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
               "tokens_per_frame": cfg.tokens_per_frame,
               "gflop_per_session_step": round(flops_per_session / 1e9, 2), "rows": []}
        steppers, table = {}, Table()
        print(f"{cfg.name} {out['overrides']}: {out['params_M']}M parameters, "
              f"{out['gflop_per_session_step']} GFLOP per session and pass")
        for sessions in a.sessions:
            x = torch.randn(sessions, *cfg.latent_shape,
                            device=self.device, dtype=self.dtype)
            t = torch.full((sessions,), 0.5, device=self.device, dtype=self.dtype)
            cond = torch.randn(sessions, cfg.dim, device=self.device, dtype=self.dtype)
            states = model.empty_states(sessions, self.device, torch.float32)
            row = {"sessions": sessions}
            variants = [("eager_reference", "reference", None),
                        ("eager_kernels", "triton", None),
                        ("graph_reference", "reference", "graph"),
                        ("compile_graph_reference", "reference", "compile"),
                        ("graph_kernels", "triton", "graph")]
            with torch.no_grad():
                for name, backend, how in variants:
                    reason = (self.skip_reason("kernels") if backend == "triton" else None) or (
                        self.skip_reason("compile") if how == "compile" else None)
                    if how and not self.on_gpu:
                        reason = reason or "skipped: CUDA graphs need a GPU"
                    if reason:
                        row[f"{name}_ms"] = reason
                        continue
                    with kernels(backend):
                        if how is None:
                            fn = model.step
                        else:
                            if name not in steppers:
                                m = copy.deepcopy(model) if how == "compile" else model
                                steppers[name] = FrameStep(m, graphs=True, buckets=tuple(
                                    a.sessions), compile=how == "compile")
                            fn = steppers[name]
                        call = functools.partial(fn, x, t, cond, states)
                        ms = attempt(lambda call=call: self.t(call))
                    row[f"{name}_ms"] = ms
                    if isinstance(ms, float):
                        row[f"{name}_tflops"] = round(sessions * flops_per_session / ms / 1e9, 1)
            out["rows"].append(row)
            table.add(row)
        return out

    # -- streaming -------------------------------------------------------------------------
    def streaming(self) -> list[dict]:
        from pomstream.model.streaming import StreamGenerator

        a = self.args
        model = self.xl_model()
        rows, table = [], Table()
        backend = "triton" if self.kernels_ok else "reference"
        with kernels(backend):
            gen = StreamGenerator(model)  # one generator: its graphs serve every count
            for streams, frames in zip(a.stream_counts, a.stream_frames, strict=True):
                r = run_model(model, frames, streams, a.stream_steps, generator=gen)
                late = r[f"ms_per_frame_step_at_{frames}"]
                row = {"streams": streams, "frames": frames, "steps": a.stream_steps,
                       "kernels": backend, "graphs": gen.frame_step.graphs,
                       "ms_per_frame_at_10": r["ms_per_frame_step_at_10"],
                       f"ms_per_frame_at_{frames}": late,
                       "late_over_early": r["late_over_early"],
                       "fps_per_stream": round(1e3 / late, 2),
                       "fps_total": r["frames_per_s_total"]}
                rows.append(row)
                table.add(row)
        return rows

    # -- training --------------------------------------------------------------------------
    def train(self) -> list[dict]:
        rows, table = [], Table()
        for mixer in ("pom", "attention"):
            row = self._train_row(mixer)
            rows.append(row)
            table.add(row)
        return rows

    def _train_row(self, mixer: str) -> dict:
        a = self.args
        L, n_frames = a.frame_tokens, a.train_frames
        torch.manual_seed(0)
        stack = Stack(a.train_depth, a.dim, a.heads, mixer, L).to(self.device, self.dtype)
        opt = torch.optim.AdamW(stack.parameters(), lr=1e-4)
        x = torch.randn(a.train_batch, n_frames * L, a.dim, device=self.device, dtype=self.dtype)
        c = torch.randn(a.train_batch, a.dim, device=self.device, dtype=self.dtype)

        def step():
            opt.zero_grad(set_to_none=True)
            stack(x, c).float().square().mean().backward()
            opt.step()

        backend = "triton" if self.kernels_ok else "reference"
        with kernels(backend):
            ms = attempt(lambda: time_ms(step, self.device, max(3, a.reps // 4), 2))
        return {"mixer": mixer, "kernels": backend if mixer == "pom" else "-",
                "depth": a.train_depth, "dim": a.dim, "frames": n_frames,
                "tokens": n_frames * L, "batch": a.train_batch, "ms_per_step": ms}


def compiled_layer(pom: PoM, kw: dict) -> Callable:
    """``torch.compile`` of the layer's plain PyTorch form for one shape and mask: a fresh
    compile per row (caches reset), the mask an argument rather than a constant."""
    torch._dynamo.reset()
    mask = kw.get("mask")
    if isinstance(mask, torch.Tensor):
        fn = torch.compile(lambda xi, m: pom(xi, mask=m), dynamic=False)
        return lambda xi: fn(xi, mask)
    return torch.compile(functools.partial(pom, **kw), dynamic=False)


def run_layer(fn: Callable, x: torch.Tensor, backward: bool) -> None:
    """One forward (and backward) of a mixer on x."""
    xi = x.detach().requires_grad_(backward)
    y = fn(xi)
    if backward:
        y.backward(torch.ones_like(y))


# -- the attention twin, and an XL-sized stack for training ------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention as in a DiT: fused qkv, SDPA (flash on a GPU), projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, t):
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, causal: bool = False):
        q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).flatten(2))

    def with_cache(self, x, k_cache, v_cache, filled: int):
        """One new frame against the keys/values of earlier frames: the caches (B, M, D) hold
        ``filled`` tokens and room for this frame's, written in place (no copy)."""
        q, k, v = self.qkv(x).chunk(3, -1)
        end = filled + x.shape[1]
        k_cache[:, filled:end] = k
        v_cache[:, filled:end] = v
        y = F.scaled_dot_product_attention(self._split(q), self._split(k_cache[:, :end]),
                                           self._split(v_cache[:, :end]))
        return self.proj(y.transpose(1, 2).flatten(2))


class Stack(nn.Module):
    """DiT-style blocks (adaLN-zero, mixer, MLP x4) with PoM or attention as the mixer."""

    def __init__(self, depth: int, dim: int, heads: int, mixer: str, frame_tokens: int):
        super().__init__()
        self.frame_tokens = frame_tokens
        self.mixer_kind = mixer
        self.mixers = nn.ModuleList(
            PoM(dim, 2, 2, heads) if mixer == "pom" else Attention(dim, heads)
            for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU("tanh"),
                                                nn.Linear(4 * dim, dim)) for _ in range(depth))
        self.ada = nn.ModuleList(nn.Linear(dim, 6 * dim) for _ in range(depth))

    def forward(self, x, c):
        for mix, mlp, ada in zip(self.mixers, self.mlps, self.ada, strict=True):
            s1, g1, b1, s2, g2, b2 = ada(F.silu(c))[:, None].chunk(6, -1)
            h = F.layer_norm(x, x.shape[-1:]) * (1 + s1) + b1
            if self.mixer_kind == "pom":
                h = mix(h, mask="frame_causal", frame_tokens=self.frame_tokens)
            else:  # token-causal: the flash-attention stand-in for frame-causal
                h = mix(h, causal=True)
            x = x + g1 * h
            x = x + g2 * mlp(F.layer_norm(x, x.shape[-1:]) * (1 + s2) + b2)
        return x


def step_flops(model: VideoDiT) -> float:
    """FLOPs of one network pass over one frame for one session: 2 x (per-token weights x
    tokens + per-frame weights), matrix products only."""
    tokens = model.cfg.tokens_per_frame
    per_frame = {id(m) for b in model.blocks for m in [b.ada]} | {id(model.final_ada)}
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not name.startswith(("prompt", "t_embed")):
            total += 2 * m.weight.numel() * (1 if id(m) in per_frame else tokens)
    return float(total)


class Table:
    """Rows printed as they come, under a header taken from the first row. A column that
    holds no number says why: ``skip`` (reason in the JSON), ``ERR`` (error in the JSON)."""

    def __init__(self):
        self.columns: list[str] | None = None

    @staticmethod
    def cell(v) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            text = str(v)
            return "skip" if text.startswith("skipped") else "ERR" if text.startswith(
                "error") else text[:12]
        if isinstance(v, int):
            return str(v)
        return f"{v:.4g}"

    def add(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.widths = [max(len(c.removesuffix("_ms")), 7 if isinstance(row[c], (int, float))
                               else 12) for c in self.columns]
            print("  ".join(c.removesuffix("_ms").rjust(w)
                            for c, w in zip(self.columns, self.widths, strict=True)))
        print("  ".join(self.cell(row.get(c, "")).rjust(w)
                        for c, w in zip(self.columns, self.widths, strict=True)), flush=True)


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


QUICK = dict(dim=64, heads=4, tokens=[256, 512], batches=[1, 2], frame_tokens=64,
             context_frames=[0, 4, 16], model="pom-dit-tiny", sessions=[1, 2],
             stream_counts=[1, 2], stream_frames=[20, 20], train_depth=2, train_frames=4,
             train_batch=1, reps=3, warmup=1, dtype="float32", device="cpu",
             compile_batches=[1, 2])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pomstream bench kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--tokens", type=int, nargs="+",
                   default=[1024, 4096, 16384, 65536, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-batch-tokens", type=int, default=8 * 131072)
    p.add_argument("--frame-tokens", type=int, default=1024)
    p.add_argument("--context-frames", type=int, nargs="+", default=[0, 15, 63, 255, 1023])
    p.add_argument("--max-kv-gib", type=float, default=8.0)
    p.add_argument("--model", default="pom-dit-xl")
    p.add_argument("--override", nargs="*", default=["spatial_mixer=false"],
                   help="model config fields for the frame step (default: one PoM a block)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--stream-counts", type=int, nargs="+", default=[1, 32])
    p.add_argument("--stream-frames", type=int, nargs="+", default=[1000, 200])
    p.add_argument("--stream-steps", type=int, default=4)
    p.add_argument("--train-depth", type=int, default=28)
    p.add_argument("--train-frames", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seconds-per-variant", type=float, default=1.0,
                   help="fewer repeats (at least 3) for variants slower than this in total")
    p.add_argument("--compile-batches", type=int, nargs="+", default=[1, 8],
                   help="batch sizes that get the torch.compile column of the layer")
    p.add_argument("--compile-tokens", type=int, nargs="*", default=[],
                   help="token counts that get it (default: all); each row compiles anew")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--peak-tbps", type=float, default=4.3)
    p.add_argument("--compile-on-cpu", action="store_true")
    p.add_argument("--no-compile", action="store_true",
                   help="skip every torch.compile variant (each compiles for tens of seconds)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes on the CPU: checks the command, measures nothing useful")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if len(args.stream_counts) != len(args.stream_frames):
        p.error("--stream-counts and --stream-frames need one value each")
    if min(args.stream_frames) < 20:
        p.error("--stream-frames must be at least 20 (frames 5-15 are the early window)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model_overrides = parse_overrides(args.override or [])
    bench = Bench(args)
    out = {"benchmark": "kernels", "machine": describe(bench.device),
           "dispatch": dispatch.describe(), "date": time.strftime("%Y-%m-%d"),
           "dtype": args.dtype, "quick": args.quick,
           "peaks": {"tflops": args.peak_tflops, "tbps": args.peak_tbps},
           "sections": {}}
    started = time.perf_counter()
    for name in args.sections:
        print(f"== {name}")
        t0 = time.perf_counter()
        try:
            out["sections"][name] = getattr(bench, name)()
        except Exception as exc:  # noqa: BLE001 - keep the other sections' numbers
            traceback.print_exc()
            out["sections"][name] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        print(f"   ({time.perf_counter() - t0:.1f} s)")
        out["seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.json, out)  # after every section: a killed run keeps what it has
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
