"""Naive float64 oracle for attention pooling (one learned query over a set of token embeddings).

Written from the formulas of scaled dot-product attention (Vaswani et al., 2017, arXiv:1706.03762) with a
single learned query (Lee et al., 2019, arXiv:1810.00825): keys k_l = W x_l + c, scores s_l = <q, k_l> / sqrt(K)
over the item's real tokens only, weights a = softmax(s), pooled = sum_l a_l x_l. Plain Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["attention_pool_reference"]


def attention_pool_reference(
    tokens: Sequence[Sequence[float]],
    query: Sequence[float],
    key_weight: Sequence[Sequence[float]],
    key_bias: Sequence[float] | None,
) -> tuple[list[float], list[float]]:
    """``(pooled, weights)`` of one item given as its real token embeddings (no padding)."""
    k_dim = len(query)
    scores = []
    for x in tokens:
        score = 0.0
        for j in range(k_dim):
            key = sum(key_weight[j][d] * x[d] for d in range(len(x))) + (key_bias[j] if key_bias is not None else 0.0)
            score += query[j] * key
        scores.append(score / math.sqrt(k_dim))
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    weights = [e / total for e in exps]
    pooled = [sum(weights[l] * tokens[l][d] for l in range(len(tokens))) for d in range(len(tokens[0]))]
    return pooled, weights
