"""The accumulation dtype every PoM reduction uses, reference and kernel alike."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of a reduction over tokens: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
