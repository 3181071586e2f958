"""Naive float64 oracle for the PNP loss, written with plain Python loops.

Li et al., 2022, arXiv:2102.04640: for a query and each positive ``i``, ``N_i = sum_{j in negatives}
sigmoid((s_j - s_i) / anneal)`` counts (smoothly) the negatives ranked before ``i``. A variant ``f`` penalises it:
O ``N``, Ds ``log(1 + N)``, Dq ``1 / (1 + N) ** alpha`` (the loss is then ``1 - mean``), Iu
``(1 + N) log(1 + N)``, Ib ``(b N - log(1 + b N)) / b^2``. A query's value is the mean over its positives; the
loss is the mean over queries with a positive. When the batch is its own reference, a query with another
positive is also its own positive (the authors' implementation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.smooth_ap import sigmoid
from tests.reference.triplet import COSINE, distance_matrix, to_lists

__all__ = ["penalty", "pnp_loss"]


def penalty(n: float, variant: str, b: float = 2.0, alpha: float = 1.0) -> float:
    if variant == "O":
        return n
    if variant == "Ds":
        return math.log(1.0 + n)
    if variant == "Dq":
        return 1.0 / (1.0 + n) ** alpha
    if variant == "Iu":
        return (1.0 + n) * math.log(1.0 + n)
    if variant == "Ib":
        return (b * n - math.log(1.0 + b * n)) / b**2
    raise ValueError(variant)


def pnp_loss(
    embeddings: object,
    labels: object | None,
    variant: str = "O",
    b: float = 2.0,
    alpha: float = 1.0,
    anneal: float = 0.01,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    pairs: Sequence[Sequence[int]] | None = None,
) -> float:
    """``pairs`` = (a1, p, a2, n) from a miner replaces the label-defined sets (no self-positive then)."""
    emb = to_lists(embeddings)
    same_set = ref_emb is None
    ref = emb if same_set else to_lists(ref_emb)
    sims = distance_matrix(emb, ref, COSINE)
    per_query = []
    for q in range(len(emb)):
        if pairs is not None:
            positives = sorted({int(p) for a, p in zip(pairs[0], pairs[1], strict=True) if int(a) == q})
            negatives = sorted({int(n) for a, n in zip(pairs[2], pairs[3], strict=True) if int(a) == q})
        else:
            lab = to_lists(labels)
            ref_lab = lab if same_set else to_lists(ref_labels)
            positives = [j for j in range(len(ref)) if ref_lab[j] == lab[q] and not (same_set and j == q)]
            negatives = [j for j in range(len(ref)) if ref_lab[j] != lab[q]]
            if same_set and positives:
                positives.append(q)
        if not positives:
            continue
        s = sims[q]
        values = [
            penalty(sum(sigmoid((s[j] - s[i]) / anneal) for j in negatives), variant, b, alpha) for i in positives
        ]
        per_query.append(sum(values) / len(values))
    if not per_query:
        return 0.0
    loss = sum(per_query) / len(per_query)
    return 1.0 - loss if variant == "Dq" else loss
