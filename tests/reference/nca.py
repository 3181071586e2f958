"""Naive float64 oracle for the neighbourhood components analysis (NCA) loss, with plain Python loops.

Goldberger, Roweis, Hinton and Salakhutdinov, 2004, "Neighbourhood Components Analysis", NeurIPS 17: query
``i`` picks reference ``j`` as its neighbour with probability ``p_ij = exp(-scale d_ij) / sum_k exp(-scale
d_ik)`` (``k != i`` when the references are the queries themselves); the probability that it is classified
correctly is ``p_i = sum_{j: y_j = y_i} p_ij``, and its loss is ``-log p_i``. For a similarity ``s`` the
logits are ``scale * s``. Queries without any same-label reference are left out.
"""

from __future__ import annotations

import math

__all__ = ["nca_values", "nca_loss"]

Matrix = list[list[float]]


def _log_sum_exp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def nca_values(
    mat: Matrix,
    labels: list[int],
    ref_labels: list[int] | None,
    softmax_scale: float,
    higher_is_closer: bool = False,
) -> tuple[list[float], list[int]]:
    """``(-log p_i, i)`` for every query ``i`` with a same-label reference."""
    same_set = ref_labels is None
    ref = labels if ref_labels is None else ref_labels
    values, rows = [], []
    for i, row in enumerate(mat):
        logits = [softmax_scale * (v if higher_is_closer else -v) for v in row]
        everyone = [logits[j] for j in range(len(row)) if not (same_set and j == i)]
        same = [logits[j] for j in range(len(row)) if ref[j] == labels[i] and not (same_set and j == i)]
        if not same:
            continue
        values.append(_log_sum_exp(everyone) - _log_sum_exp(same))
        rows.append(i)
    return values, rows


def nca_loss(
    mat: Matrix,
    labels: list[int],
    ref_labels: list[int] | None = None,
    softmax_scale: float = 1.0,
    higher_is_closer: bool = False,
    weights: list[float] | None = None,
) -> float:
    """Mean of ``weights[i] * (-log p_i)`` over the queries with a same-label reference (0 if none)."""
    values, rows = nca_values(mat, labels, ref_labels, softmax_scale, higher_is_closer)
    if weights is not None:
        values = [v * weights[i] for v, i in zip(values, rows, strict=True)]
    return sum(values) / len(values) if values else 0.0
