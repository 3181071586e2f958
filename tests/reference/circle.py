"""Naive float64 oracle for the circle loss, written with plain Python loops.

Sun et al., 2020, "Circle Loss: A Unified Perspective of Pair Similarity
Optimization" (CVPR, arXiv:2002.10857), equation (6) with the pair-wise labels of one anchor: over its ``L``
positive similarities ``s_p`` and ``K`` negative similarities ``s_n``::

    L = log(1 + sum_{j=1..K} sum_{i=1..L} exp(gamma * (alpha_n^j (s_n^j - delta_n) - alpha_p^i (s_p^i - delta_p))))
    alpha_p = max(0, 1 + m - s_p), alpha_n = max(0, s_n + m), delta_p = 1 - m, delta_n = m

The double sum is evaluated term by term, in log space so that large ``gamma`` does not overflow. Positive
and negative sets hold each listed pair once. An anchor lacking positives or negatives scores 0; the loss is
the mean of the non-zero anchor scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.contrastive import Pairs, avg_non_zero

__all__ = ["circle_values", "circle_loss"]

Matrix = Sequence[Sequence[float]]


def _log1p_sum_exp(exponents: list[float]) -> float:
    """``log(1 + sum(exp(e)))`` without overflow."""
    top = max([0.0, *exponents])
    return top + math.log(math.exp(-top) + sum(math.exp(e - top) for e in exponents))


def circle_values(
    cos: Matrix, pairs: Pairs, m: float = 0.4, gamma: float = 80.0, weights_from: Matrix | None = None
) -> list[float]:
    """Each anchor's loss. ``weights_from``: take the ``alpha`` weights from this matrix instead of ``cos``
    (the paper treats them as constants, so the gradient is the derivative with the weights held fixed)."""
    at = cos if weights_from is None else weights_from
    a1, p, a2, n = pairs
    positives = set(zip(a1, p, strict=True))
    negatives = set(zip(a2, n, strict=True))
    values = []
    for a, row in enumerate(cos):
        s_p = [(float(v), float(at[a][j])) for j, v in enumerate(row) if (a, j) in positives]
        s_n = [(float(v), float(at[a][j])) for j, v in enumerate(row) if (a, j) in negatives]
        if not s_p or not s_n:
            values.append(0.0)
            continue
        exponents = []
        for sn, wn in s_n:
            for sp, wp in s_p:
                alpha_n = max(0.0, wn + m)
                alpha_p = max(0.0, 1 + m - wp)
                exponents.append(gamma * (alpha_n * (sn - m) - alpha_p * (sp - (1 - m))))
        values.append(_log1p_sum_exp(exponents))
    return values


def circle_loss(
    cos: Matrix, pairs: Pairs, m: float = 0.4, gamma: float = 80.0, weights_from: Matrix | None = None
) -> float:
    return avg_non_zero(circle_values(cos, pairs, m, gamma, weights_from))
