"""The one place that decides whether PoM runs its Triton kernels or the PyTorch reference.

``POMSTREAM_KERNELS`` (read at every call, so tests and benchmarks can switch it):

- ``auto`` (default): Triton kernels for CUDA tensors when Triton imports, the reference
  otherwise (CPU tensors, no Triton, another accelerator);
- ``reference``: always the pure-PyTorch reference (``kernels/pom/*/naive.py``);
- ``triton``: always the kernels; CPU tensors then need ``TRITON_INTERPRET=1`` (Triton's
  interpreter, how the test suite checks the kernels without a GPU). An error, not a
  silent fallback, when that cannot work.

Inside ``torch.compile`` the reference always runs: the compiler fuses the plain form
itself, and the kernels serve eager and CUDA-graph execution.

``POMSTREAM_KERNEL_POISON=1`` fills every kernel output with NaN before the launch, so a
kernel that leaves an element unwritten fails its test instead of passing on stale memory.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

BACKENDS = ("auto", "reference", "triton")


@functools.cache
def triton_available() -> str | None:
    """None when Triton imports, else the reason it does not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no kernels
        return f"triton does not import: {exc}"
    return None


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def interpreting() -> bool:
    return _flag("TRITON_INTERPRET")


def requested() -> str:
    mode = os.environ.get("POMSTREAM_KERNELS", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"POMSTREAM_KERNELS={mode!r}; expected one of {BACKENDS}")
    return mode


def use_triton(*tensors: Tensor) -> bool:
    """True when the kernels should run on these tensors (see the module docstring)."""
    if torch.compiler.is_compiling():
        return False
    mode = requested()
    if mode == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "auto":
        return on_cuda and triton_available() is None
    reason = triton_available()
    if reason:
        raise RuntimeError(f"POMSTREAM_KERNELS=triton but {reason}")
    if not on_cuda and not interpreting():
        raise RuntimeError("POMSTREAM_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 "
                           "(set before Triton is imported)")
    return True


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
    """An uninitialised kernel output, NaN-filled when POMSTREAM_KERNEL_POISON=1."""
    if _flag("POMSTREAM_KERNEL_POISON"):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def describe() -> dict:
    """What the dispatcher would do here, for logs and benchmark JSON."""
    info = {"requested": requested(), "triton": triton_available() or "available",
            "interpreter": interpreting(), "cuda": torch.cuda.is_available()}
    try:
        import triton
        info["triton_version"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    return info
