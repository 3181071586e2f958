"""Naive float64 oracle for AP-loss and its error-driven update, written with plain Python loops.

Chen, Liu, Tang, Zou, Liao and Li, 2019, "Towards Accurate One-Stage Object Detection with AP-Loss",
arXiv:1904.06373:

- ``x_ij = s_j - s_i`` (Eq. 2 with scores ``s``); ``H`` the step function, replaced by the piecewise-linear
  ``H(x) = 0 (x < -delta), x / (2 delta) + 1/2 (|x| <= delta), 1 (x > delta)`` (Eq. 10);
- ``rank(i) = 1 + sum_{k in P u N, k != i} H(x_ik)``; ``L_ij = H(x_ij) / rank(i)`` for ``i in P, j in N`` (Eq. 5);
- ``1 - AP = 1/|P| sum_{i in P} sum_{j in N} L_ij`` (Eq. 4-6);
- error-driven update (section 3.3): ``g_ij = L_ij`` (target 0), so the loss's gradient on a score is
  ``-sum_j L_ij / |P|`` for a positive ``i`` and ``sum_i L_ij / |P|`` for a negative ``j``.

Retrieval use: each anchor ranks the reference items (the other batch items when the batch is its own
reference); positives share the anchor's label. The loss is the mean over anchors with a positive.
"""

from __future__ import annotations

import math

__all__ = ["step", "anchor_ap_loss", "cosine_matrix", "ap_loss"]


def step(x: float, delta: float) -> float:
    if delta == 0:
        return 1.0 if x > 0 else 0.5 if x == 0 else 0.0
    if x < -delta:
        return 0.0
    if x > delta:
        return 1.0
    return x / (2 * delta) + 0.5


def anchor_ap_loss(
    scores: list[float], positives: list[int], negatives: list[int], delta: float
) -> tuple[float, list[float]]:
    """``(1 - AP, gradient on every score)`` of one anchor; items in neither list take no part."""
    grad = [0.0] * len(scores)
    if not positives:
        return 0.0, grad
    ranked = positives + negatives
    total = 0.0
    for i in positives:
        rank = 1.0
        for k in ranked:
            if k != i:
                rank += step(scores[k] - scores[i], delta)
        for j in negatives:
            primary = step(scores[j] - scores[i], delta) / rank
            total += primary
            grad[i] -= primary
            grad[j] += primary
    size = len(positives)
    return total / size, [g / size for g in grad]


def cosine_matrix(query: object, reference: object) -> list[list[float]]:
    q = [[float(c) for c in row] for row in query.tolist()]  # type: ignore[attr-defined]
    r = [[float(c) for c in row] for row in reference.tolist()]  # type: ignore[attr-defined]
    out = []
    for a in q:
        na = math.sqrt(sum(c * c for c in a))
        row = []
        for b in r:
            nb = math.sqrt(sum(c * c for c in b))
            row.append(sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb))
        out.append(row)
    return out


def ap_loss(
    scores: list[list[float]],
    labels: list[int],
    ref_labels: list[int] | None = None,
    delta: float = 1.0,
) -> tuple[float, list[list[float]]]:
    """Mean ``1 - AP`` over anchors with a positive, and its error-driven gradient on the score matrix.

    ``ref_labels=None``: the batch is its own reference and an anchor never ranks itself.
    """
    same_set = ref_labels is None
    reference = labels if ref_labels is None else ref_labels
    grads = [[0.0] * len(reference) for _ in labels]
    values = []
    counted = []
    for a, label in enumerate(labels):
        positives = [k for k, r in enumerate(reference) if r == label and not (same_set and k == a)]
        negatives = [k for k, r in enumerate(reference) if r != label]
        if not positives:
            continue
        value, grad = anchor_ap_loss(scores[a], positives, negatives, delta)
        values.append(value)
        counted.append((a, grad))
    if not values:
        return 0.0, grads
    for a, grad in counted:
        grads[a] = [g / len(values) for g in grad]
    return sum(values) / len(values), grads
