"""Random float64 batches shared by the loss tests."""

from __future__ import annotations

import torch
from torch import Tensor


def random_batch(seed: int, n: int = 10, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``n`` float64 embeddings of size ``d`` (times ``scale``) and labels in ``[0, classes)``, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)
