"""Naive float64 oracle for the contrastive loss, written with plain Python loops.

Hadsell, Chopra and LeCun, 2006, "Dimensionality Reduction by Learning an Invariant Mapping" (CVPR): similar
pairs are pulled together, dissimilar pairs pushed apart until they are at least a margin away. In the
generalised form used here, with a distance ``D`` (lower is closer)::

    positive pair (a, p): max(0, D_ap - pos_margin)
    negative pair (a, n): max(0, neg_margin - D_an)

and with a similarity ``S`` (higher is closer) ``max(0, pos_margin - S_ap)`` and ``max(0, S_an - neg_margin)``.
Each kind is averaged over its non-zero values and the two averages are added.

Inputs are nested lists: ``mat[i][j]`` compares query ``i`` with reference ``j``; pairs are four lists
``(a1, p, a2, n)``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Pairs", "pair_losses", "avg_non_zero", "mean", "contrastive_loss"]

Matrix = Sequence[Sequence[float]]
Pairs = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]


def avg_non_zero(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0]
    return sum(positive) / len(positive) if positive else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def pair_losses(
    mat: Matrix, pairs: Pairs, is_similarity: bool, pos_margin: float, neg_margin: float
) -> tuple[list[float], list[float]]:
    """The loss of every positive pair and of every negative pair, in the order given."""
    a1, p, a2, n = pairs
    pos, neg = [], []
    for i, j in zip(a1, p, strict=True):
        v = float(mat[i][j])
        pos.append(max(0.0, pos_margin - v) if is_similarity else max(0.0, v - pos_margin))
    for i, k in zip(a2, n, strict=True):
        v = float(mat[i][k])
        neg.append(max(0.0, v - neg_margin) if is_similarity else max(0.0, neg_margin - v))
    return pos, neg


def contrastive_loss(
    mat: Matrix, pairs: Pairs, is_similarity: bool = False, pos_margin: float = 0.0, neg_margin: float = 1.0
) -> float:
    pos, neg = pair_losses(mat, pairs, is_similarity, pos_margin, neg_margin)
    return avg_non_zero(pos) + avg_non_zero(neg)
