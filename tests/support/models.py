"""Models for tests."""

import torch

from pomstream.model.config import get_config
from pomstream.model.dit import VideoDiT


def randomized_model(name: str = "pom-dit-tiny", dtype=torch.float64, seed: int = 0, **overrides):
    """A model whose zero-initialised layers (adaLN, output) are random too.

    With adaLN-zero every block starts as the identity, which would make streaming and
    parallel outputs trivially equal; random values everywhere make the tests bite.
    """
    torch.manual_seed(seed)
    model = VideoDiT(get_config(name, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.to(dtype).eval().requires_grad_(False)
