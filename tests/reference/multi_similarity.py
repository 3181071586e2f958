"""Naive float64 oracle for the multi-similarity loss, with plain Python loops.

Wang, Han, Huang, Dong and Scott, 2019, "Multi-Similarity Loss with General Pair Weighting for Deep Metric
Learning", arXiv:1904.06627, eq. (9): for anchor ``i`` with positives ``P_i`` and negatives ``N_i``,

    (1/alpha) log(1 + sum_{k in P_i} exp(-alpha (S_ik - lambda)))
        + (1/beta) log(1 + sum_{k in N_i} exp(beta (S_ik - lambda)))

For a distance ``D`` (lower is closer) ``S_ik - lambda`` is replaced by ``lambda - D_ik``. The input is the
comparison matrix (query rows, reference columns) as nested lists; pairs are sets of (row, column).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["log1p_sum_exp", "multi_similarity_values", "multi_similarity_loss"]

Matrix = list[list[float]]


def log1p_sum_exp(xs: list[float]) -> float:
    """``log(1 + sum(exp(x)))``, stable for large ``x``."""
    top = max([0.0, *xs])
    total = math.exp(-top)
    for x in xs:
        total += math.exp(x - top)
    return top + math.log(total)


def multi_similarity_values(
    mat: Matrix,
    positive_pairs: Iterable[tuple[int, int]],
    negative_pairs: Iterable[tuple[int, int]],
    alpha: float,
    beta: float,
    base: float,
    higher_is_closer: bool = True,
) -> list[float]:
    """One value per query row (0 for a row with no pair)."""
    positives = set(positive_pairs)
    negatives = set(negative_pairs)
    values = []
    for i, row in enumerate(mat):
        closeness = [(v - base) if higher_is_closer else (base - v) for v in row]
        pos = [-alpha * closeness[j] for j in range(len(row)) if (i, j) in positives]
        neg = [beta * closeness[j] for j in range(len(row)) if (i, j) in negatives]
        values.append(log1p_sum_exp(pos) / alpha + log1p_sum_exp(neg) / beta)
    return values


def multi_similarity_loss(
    mat: Matrix,
    positive_pairs: Iterable[tuple[int, int]],
    negative_pairs: Iterable[tuple[int, int]],
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    higher_is_closer: bool = True,
) -> float:
    """Mean of the per-row values."""
    values = multi_similarity_values(mat, positive_pairs, negative_pairs, alpha, beta, base, higher_is_closer)
    return sum(values) / len(values)
