"""Reference (pure PyTorch) for PoM's streaming update of a batch of carried states.

Each of S sequences (sessions, or sessions x patch positions) brings one chunk of m new
tokens. Its state is the running *sum* of features and the running *token count* (see
``model/pom.py``, ``PoMState``); with a per-channel decay ``gamma`` both are multiplied by
``gamma`` before the chunk is added. The chunk then reads the updated mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pomstream.kernels.pom.aggregate.naive import features
from pomstream.kernels.pom.precision import acc_dtype


def state_update(hc: Tensor, coeff: Tensor, total: Tensor, count: Tensor,
                 gamma: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Fold one chunk into each state.

    hc (S, m, eD) context projections of the chunk; total (S, eD); count (S, 1), or (S, eD)
    with a per-channel decay; gamma (eD,) or None. Returns (hbar (S, eD) in hc's dtype,
    new total, new count), the state in the wider of its own and hc's dtype.
    """
    acc = acc_dtype(torch.promote_types(total.dtype, hc.dtype))
    chunk = features(hc.to(acc), coeff).sum(1)  # (S, eD)
    total, count = total.to(acc), count.to(acc)
    if gamma is not None:
        g = gamma.to(acc)
        total, count = g * total, g * count
    total, count = total + chunk, count + hc.shape[1]
    return (total / count.clamp_min(1)).to(hc.dtype), total, count
