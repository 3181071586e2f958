"""Naive float64 oracle for Smooth-AP, written with plain Python loops.

Brown, Xie, Kalogeiton and Zisserman, 2020, arXiv:2007.12163: for a query with retrieval set ``Omega`` and
positives ``P``, ``AP = 1/|P| sum_{i in P} (1 + sum_{j in P, j != i} G(s_j - s_i)) / (1 + sum_{j in Omega, j != i}
G(s_j - s_i))`` with ``G(x) = sigmoid(x / tau)`` and ``s`` cosine similarities to the query. When the batch is its
own retrieval set, the query belongs to it and is one of its own positives (the authors' implementation).
The loss of a query is ``1 - AP``; the loss is the mean over queries with a positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.triplet import COSINE, distance_matrix, to_lists

__all__ = ["sigmoid", "smooth_ap_values", "smooth_ap_loss"]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def smooth_ap_values(
    embeddings: object,
    labels: object,
    temperature: float = 0.01,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
) -> dict[int, float]:
    """``{query: 1 - AP}`` for every query with a positive in the retrieval set."""
    emb = to_lists(embeddings)
    lab = to_lists(labels)
    ref = emb if ref_emb is None else to_lists(ref_emb)
    ref_lab = lab if ref_emb is None else to_lists(ref_labels)
    sims = distance_matrix(emb, ref, COSINE)
    out = {}
    for q in range(len(emb)):
        s = sims[q]
        positives = [j for j in range(len(ref)) if ref_lab[j] == lab[q]]
        if not positives:
            continue
        total = 0.0
        for i in positives:
            rank_pos = 1.0 + sum(sigmoid((s[j] - s[i]) / temperature) for j in positives if j != i)
            rank_all = 1.0 + sum(sigmoid((s[j] - s[i]) / temperature) for j in range(len(ref)) if j != i)
            total += rank_pos / rank_all
        out[q] = 1.0 - total / len(positives)
    return out


def smooth_ap_loss(
    embeddings: object,
    labels: object,
    temperature: float = 0.01,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    weights: Sequence[float] | None = None,
) -> float:
    values = smooth_ap_values(embeddings, labels, temperature, ref_emb, ref_labels)
    if not values:
        return 0.0
    return sum(v * (1.0 if weights is None else weights[q]) for q, v in values.items()) / len(values)
