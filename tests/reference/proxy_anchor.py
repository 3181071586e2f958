"""Naive float64 oracle for the Proxy-Anchor loss, with plain Python loops.

Kim, Kim, Cho and Kwak, 2020, "Proxy Anchor Loss for Deep Metric Learning", arXiv:2003.13911::

    pos = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
    neg = 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

``P+``: proxies with a sample of their class in the batch. For a distance ``d`` the exponents are
``alpha (d - margin)`` and ``alpha (-margin - d)``. An optional per-sample offset is added to every exponent
of that sample (pytorch-metric-learning's way of applying miner weights ``w``: offset ``w - 1``).
"""

from __future__ import annotations

import math

__all__ = ["proxy_anchor_terms", "proxy_anchor_loss"]

Matrix = list[list[float]]


def _log1p_sum_exp(xs: list[float]) -> float:
    top = max([0.0] + xs)
    return top + math.log(math.exp(-top) + sum(math.exp(v - top) for v in xs))


def proxy_anchor_terms(
    mat: Matrix,
    labels: list[int],
    num_classes: int,
    margin: float,
    alpha: float,
    higher_is_closer: bool = True,
    offsets: list[float] | None = None,
) -> tuple[list[float], list[float], int]:
    """``(pos value per proxy, neg value per proxy, number of proxies with positives)``."""
    offsets = offsets if offsets is not None else [0.0] * len(labels)
    pos, neg = [], []
    for p in range(num_classes):
        pos_exps, neg_exps = [], []
        for i, row in enumerate(mat):
            v = row[p]
            if labels[i] == p:
                e = alpha * (margin - v) if higher_is_closer else alpha * (v - margin)
                pos_exps.append(e + offsets[i])
            else:
                e = alpha * (v + margin) if higher_is_closer else alpha * (-margin - v)
                neg_exps.append(e + offsets[i])
        pos.append(_log1p_sum_exp(pos_exps))
        neg.append(_log1p_sum_exp(neg_exps))
    return pos, neg, len(set(labels))


def proxy_anchor_loss(
    mat: Matrix,
    labels: list[int],
    num_classes: int,
    margin: float = 0.1,
    alpha: float = 32.0,
    higher_is_closer: bool = True,
    offsets: list[float] | None = None,
) -> float:
    pos, neg, with_pos = proxy_anchor_terms(mat, labels, num_classes, margin, alpha, higher_is_closer, offsets)
    return sum(pos) / with_pos + sum(neg) / num_classes
