"""Naive float64 oracle for the generalised lifted structure loss, written with plain Python loops.

Hermans, Beyer and Leibe, 2017, "In Defense of the Triplet Loss for Person Re-Identification"
(arXiv:1703.07737): the lifted loss generalised to one term per anchor ``a``, with a distance ``D``::

    L_a = max(0, log sum_{p in P(a)} exp(D_ap - pos_margin) + log sum_{n in N(a)} exp(neg_margin - D_an))

(for a similarity ``S``: ``exp(pos_margin - S_ap)`` and ``exp(S_an - neg_margin)``). ``P(a)`` and ``N(a)`` are
sets (a pair listed twice counts once); an empty set contributes 0 instead of its log. The loss is the mean
of ``L_a`` over every query element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.contrastive import Pairs

__all__ = ["anchor_values", "generalized_lifted_structure_loss"]

Matrix = Sequence[Sequence[float]]


def _log_sum_exp(values: list[float]) -> float:
    if not values:
        return 0.0
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def anchor_values(
    mat: Matrix,
    pairs: Pairs,
    is_similarity: bool = False,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
) -> list[float]:
    """Each query element's value before the hinge ``max(0, .)``."""
    a1, p, a2, n = pairs
    positives = set(zip(a1, p, strict=True))
    negatives = set(zip(a2, n, strict=True))
    values = []
    for a, row in enumerate(mat):
        pos_exponents, neg_exponents = [], []
        for j, v in enumerate(row):
            v = float(v)
            if (a, j) in positives:
                pos_exponents.append(pos_margin - v if is_similarity else v - pos_margin)
            if (a, j) in negatives:
                neg_exponents.append(v - neg_margin if is_similarity else neg_margin - v)
        values.append(_log_sum_exp(pos_exponents) + _log_sum_exp(neg_exponents))
    return values


def generalized_lifted_structure_loss(
    mat: Matrix,
    pairs: Pairs,
    is_similarity: bool = False,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
) -> float:
    values = anchor_values(mat, pairs, is_similarity, neg_margin, pos_margin)
    return sum(max(0.0, v) for v in values) / len(values)
