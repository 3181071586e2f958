"""Naive float64 oracle for the Proxy-NCA loss, with plain Python loops.

Movshovitz-Attias, Toshev, Leung, Ioffe and Singh, 2017, "No Fuss Distance Metric Learning using Proxies",
arXiv:1703.07464, in its softmax form: sample ``i`` with label ``y_i`` has logits ``l_ic = -scale d(x_i, p_c)``
(``+scale s(x_i, p_c)`` for a similarity) to every class proxy ``p_c`` and loss ``-log softmax(l_i)_{y_i}``.
An optional per-sample weight multiplies each loss; the result is the mean over the batch.
"""

from __future__ import annotations

import math

__all__ = ["proxy_nca_values", "proxy_nca_loss"]

Matrix = list[list[float]]


def proxy_nca_values(mat: Matrix, labels: list[int], scale: float, higher_is_closer: bool) -> list[float]:
    """``-log p(y_i | x_i)`` per sample, from the (sample x proxy) distance or similarity matrix ``mat``."""
    out = []
    for i, row in enumerate(mat):
        logits = [scale * v if higher_is_closer else -scale * v for v in row]
        top = max(logits)
        log_total = top + math.log(sum(math.exp(v - top) for v in logits))
        out.append(log_total - logits[labels[i]])
    return out


def proxy_nca_loss(
    mat: Matrix,
    labels: list[int],
    scale: float = 1.0,
    higher_is_closer: bool = False,
    weights: list[float] | None = None,
) -> float:
    values = proxy_nca_values(mat, labels, scale, higher_is_closer)
    if weights is not None:
        values = [v * w for v, w in zip(values, weights, strict=True)]
    return sum(values) / len(values)
