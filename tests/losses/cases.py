"""Inputs shared by the loss tests: seeded random batches and the distances each loss is checked under."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from tests.reference import distances as ref_dist

Matrix = list[list[float]]
#: (dmlkit distance factory, float64 oracle of its matrix, higher is closer, (PML class name, PML kwargs))
DistanceCase = tuple[Callable[[], BaseDistance], Callable[[Matrix, Matrix], Matrix], bool, tuple[str, dict]]


def random_batch(seed: int, n: int = 10, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``n`` float64 embeddings of size ``d`` (times ``scale``) and labels in ``[0, classes)``, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


#: the distances the contrastive and lifted-structure losses are checked under
PAIR_LOSS_DISTANCES: dict[str, DistanceCase] = {
    "lp": (LpDistance, ref_dist.lp_matrix, False, ("LpDistance", {})),
    "lp_raw": (
        lambda: LpDistance(normalize_embeddings=False),
        lambda q, r: ref_dist.lp_matrix(q, r, normalize=False),
        False,
        ("LpDistance", {"normalize_embeddings": False}),
    ),
    "lp_squared": (
        lambda: LpDistance(power=2),
        lambda q, r: ref_dist.lp_matrix(q, r, power=2),
        False,
        ("LpDistance", {"power": 2}),
    ),
    "cosine": (CosineSimilarity, ref_dist.cosine_matrix, True, ("CosineSimilarity", {})),
}

#: the distances the multi-similarity, NT-Xent and SupCon losses are checked under
SOFTMAX_LOSS_DISTANCES: dict[str, DistanceCase] = {
    "cosine": (CosineSimilarity, ref_dist.cosine_matrix, True, ("CosineSimilarity", {})),
    "dot_raw": (
        lambda: DotProductSimilarity(normalize_embeddings=False),
        lambda q, r: ref_dist.dot_matrix(q, r, normalize=False),
        True,
        ("DotProductSimilarity", {"normalize_embeddings": False}),
    ),
    "lp": (LpDistance, ref_dist.lp_matrix, False, ("LpDistance", {})),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        lambda q, r: ref_dist.lp_matrix(q, r, power=2, normalize=False),
        False,
        ("LpDistance", {"normalize_embeddings": False, "power": 2}),
    ),
}
