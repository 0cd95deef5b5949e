"""The network pass of one frame for a batch of sessions, made fast on a GPU.

:class:`FrameStep` wraps :meth:`VideoDiT.step` (the same inputs, the same outputs). On
CUDA it captures the step in CUDA graphs, one per *batch bucket* (1, 2, 4, ... sessions):
a call pads its batch up to the next bucket, copies the inputs into the graph's static
buffers, replays, and returns copies of the real rows. At one frame of 1,024 tokens a
DiT-XL-sized step is hundreds of small kernels; replaying them as one graph removes the
launch cost that dominates eager PyTorch there. The PoM operators inside run the Triton
kernels (``kernels/``) when they are enabled, so the graph holds the fused aggregation,
state update and selection. Optionally each block is ``torch.compile``-d before capture.

Padding rows are zero inputs with empty states; rows never mix in the network, so the
real rows are unaffected (the tests check padded = unpadded on CPU, where the same padding
path runs without graphs). Batches above the largest bucket run eagerly.

On CPU (or with ``graphs=False``) a call is just ``model.step``.

One thread steps a FrameStep (the server's stepping thread): a replay's static inputs are
only safe to overwrite once it has been queued on the same stream. The graphs of all
buckets share one memory pool. A graph fixes the kernel choice (``POMSTREAM_KERNELS``) in
force when it was captured; changing it later captures new graphs. ``compile=True``
compiles the model's blocks in place (their state-dict keys change): give it a copy.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from pomstream.kernels import dispatch

from .dit import VideoDiT
from .pom import PoMState

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


Inputs = tuple[Tensor, Tensor, Tensor, list[PoMState]]  # x, t, cond, states


def _buffers(batch: int, like: Inputs) -> Inputs:
    """Zero inputs shaped like ``like`` for ``batch`` sessions."""
    x, t, cond, states = like
    return (x.new_zeros((batch, *x.shape[1:])), t.new_zeros((batch,)),
            cond.new_zeros((batch, *cond.shape[1:])),
            [PoMState(s.total.new_zeros((batch, *s.total.shape[1:])),
                      s.count.new_zeros((batch, *s.count.shape[1:]))) for s in states])


def _fill(buffers: Inputs, inputs: Inputs) -> None:
    """Copy ``inputs`` into the first rows of ``buffers``; the padding rows become zero
    inputs with empty states."""
    n = inputs[0].shape[0]
    pairs = list(zip(buffers[:3], inputs[:3], strict=True))
    for dst, src in zip(buffers[3], inputs[3], strict=True):
        pairs += [(dst.total, src.total), (dst.count, src.count)]
    for dst, src in pairs:
        dst[:n].copy_(src)
        dst[n:].zero_()


def _rows(n: int, v: Tensor, states: list[PoMState]) -> tuple[Tensor, list[PoMState]]:
    """The first ``n`` rows of a step's outputs, as new tensors."""
    return v[:n].clone(), [PoMState(s.total[:n].clone(), s.count[:n].clone()) for s in states]


class _Graph:
    """One captured step for a fixed batch size: static inputs, outputs and the graph."""

    def __init__(self, model: VideoDiT, batch: int, like: Inputs, warmup: int, pool):
        self.inputs = _buffers(batch, like)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (autotuning, lazy init) outside the graph
            for _ in range(warmup):
                model.step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (encoders, the API) may use CUDA during the capture
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.v, self.new_states = model.step(*self.inputs)

    def __call__(self, *inputs) -> tuple[Tensor, list[PoMState]]:
        _fill(self.inputs, inputs)
        self.graph.replay()
        return _rows(inputs[0].shape[0], self.v, self.new_states)


class FrameStep:
    """``model.step`` for a batch of sessions, through CUDA graphs per batch bucket.

    Args:
        model: the network (its parameters fix device and dtype).
        graphs: capture CUDA graphs; default: when the model is on CUDA.
        buckets: batch sizes that get a graph; a batch pads up to the next one.
        compile: ``torch.compile`` each block before capture (slower start, fewer kernels).
        pad: pad to buckets even without graphs (how the CPU tests check the padding).
    """

    def __init__(self, model: VideoDiT, graphs: bool | None = None,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS, compile: bool = False,
                 pad: bool = False, warmup: int = 2):
        self.model = model
        device = next(model.parameters()).device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        if self.graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        if not buckets or sorted(set(buckets)) != list(buckets) or buckets[0] < 1:
            raise ValueError(f"buckets must be increasing positive sizes, got {buckets}")
        self.buckets, self.pad, self.warmup = tuple(buckets), pad, warmup
        self._captured: dict[tuple, _Graph] = {}
        self._lock = threading.Lock()
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        if compile:
            for i, blk in enumerate(model.blocks):
                model.blocks[i] = torch.compile(blk, dynamic=False)

    def bucket(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor, states: list[PoMState]
                 ) -> tuple[Tensor, list[PoMState]]:
        n = x.shape[0]
        size = self.bucket(n)
        if size is None or not (self.graphs or self.pad):
            return self.model.step(x, t, cond, states)
        if not self.graphs:
            return self._padded(x, t, cond, states, size)
        key = (size, x.dtype, t.dtype, cond.dtype, tuple(s.total.dtype for s in states),
               dispatch.requested(), torch.is_grad_enabled())
        with self._lock:
            graph = self._captured.get(key)
            if graph is None:
                graph = _Graph(self.model, size, (x, t, cond, states), self.warmup, self._pool)
                self._captured[key] = graph
            return graph(x, t, cond, states)

    def _padded(self, x, t, cond, states, size):
        """The graphs' padding without a graph: the same buffers, filled the same way."""
        inputs = (x, t, cond, states)
        buffers = _buffers(size, inputs)
        _fill(buffers, inputs)
        return _rows(x.shape[0], *self.model.step(*buffers))

    @property
    def captured(self) -> list[int]:
        """Batch sizes with a captured graph."""
        return sorted({k[0] for k in self._captured})
