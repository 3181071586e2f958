"""Naive float64 oracle for the lifted structured loss, written with plain Python loops.

Oh Song, Xiang, Jegelka and Savarese, 2016, "Deep Metric Learning via Lifted Structured Feature Embedding"
(CVPR, arXiv:1511.06452), equation (4): for each positive pair (i, j) with distance ``D``::

    J_ij = log( sum_{(i, k) in N} exp(alpha - D_ik) + sum_{(j, l) in N} exp(alpha - D_jl) ) + D_ij
    L = 1 / (2 |P|) * sum_{(i, j) in P} max(0, J_ij) ** 2

``P`` here lists ordered positive pairs (each unordered pair twice), so ``L`` is the mean over ``P`` of
``max(0, J_ij) ** 2 / 2``. Generalisations checked as well: ``D_ij`` becomes ``D_ij - pos_margin``; for a
similarity ``S`` the signs flip (``exp(S_ik - alpha)``, ``pos_margin - S_ij``); a listed negative pair counts
once per listing; a positive pair none of whose ends anchors a negative pair takes 0 for the log term; no
negative pair at all gives 0. With a reference set distinct from the batch (``ref_is_batch=False``), ``j`` is
a reference element and anchors no negative pair, so only the pairs anchored at ``i`` enter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.contrastive import Pairs

__all__ = ["lifted_structure_values", "lifted_structure_loss"]

Matrix = Sequence[Sequence[float]]


def lifted_structure_values(
    mat: Matrix,
    pairs: Pairs,
    is_similarity: bool = False,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    ref_is_batch: bool = True,
) -> list[float]:
    a1, p, a2, n = pairs
    values = []
    for i, j in zip(a1, p, strict=True):
        total, count = 0.0, 0
        for b, k in zip(a2, n, strict=True):
            if b == i or (ref_is_batch and b == j):
                v = float(mat[b][k])
                total += math.exp(v - neg_margin if is_similarity else neg_margin - v)
                count += 1
        log_term = math.log(total) if count else 0.0
        d = float(mat[i][j])
        j_value = log_term + (pos_margin - d if is_similarity else d - pos_margin)
        values.append(max(0.0, j_value) ** 2 / 2)
    return values


def lifted_structure_loss(
    mat: Matrix,
    pairs: Pairs,
    is_similarity: bool = False,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    ref_is_batch: bool = True,
) -> float:
    if not pairs[0] or not pairs[2]:
        return 0.0
    values = lifted_structure_values(mat, pairs, is_similarity, neg_margin, pos_margin, ref_is_batch)
    return sum(values) / len(values)
