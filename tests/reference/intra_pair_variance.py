"""Naive float64 oracle for the intra-pair variance loss, written with plain Python loops.

Yu and Tao, 2019, "Deep Metric Learning with Tuplet Margin Loss" (ICCV): with cosine similarities and
``mu_p``, ``mu_n`` the means over the positive and negative pairs::

    L_pos = mean_{(a, p)} max(0, (1 - eps_p) * mu_p - s_ap) ** 2
    L_neg = mean_{(a, n)} max(0, s_an - (1 + eps_n) * mu_n) ** 2

For a distance (lower is closer) the comparisons flip: ``max(0, d_ap - (1 + eps_p) * mu_p) ** 2`` and
``max(0, (1 - eps_n) * mu_n - d_an) ** 2``. The loss is ``L_pos + L_neg`` (an empty kind gives 0); listed pairs
count as listed, repeats included.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.reference.contrastive import Pairs

__all__ = ["intra_pair_variance_loss"]

Matrix = Sequence[Sequence[float]]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def intra_pair_variance_loss(
    mat: Matrix, pairs: Pairs, is_similarity: bool = True, pos_eps: float = 0.01, neg_eps: float = 0.01
) -> float:
    a1, p, a2, n = pairs
    pos = [float(mat[i][j]) for i, j in zip(a1, p, strict=True)]
    neg = [float(mat[i][k]) for i, k in zip(a2, n, strict=True)]
    total = 0.0
    if pos:
        mu = _mean(pos)
        if is_similarity:
            total += _mean([max(0.0, (1 - pos_eps) * mu - s) ** 2 for s in pos])
        else:
            total += _mean([max(0.0, d - (1 + pos_eps) * mu) ** 2 for d in pos])
    if neg:
        mu = _mean(neg)
        if is_similarity:
            total += _mean([max(0.0, s - (1 + neg_eps) * mu) ** 2 for s in neg])
        else:
            total += _mean([max(0.0, (1 - neg_eps) * mu - d) ** 2 for d in neg])
    return total
