"""Naive float64 oracle for the signal-to-noise-ratio contrastive loss, written with plain Python loops.

Yuan et al., 2019, "Signal-to-Noise Ratio: A Robust Distance Metric for Deep Metric
Learning" (CVPR, arXiv:1904.02616). The SNR distance from anchor ``a`` to ``x`` is ``Var(x - a) / Var(a)``
(sample variances over the embedding dimensions). The loss is the contrastive loss on it::

    positive pair: max(0, d(a, p) - pos_margin)      negative pair: max(0, neg_margin - d(a, n))

each kind averaged over its non-zero values, plus the paper's zero-mean regulariser
``lam * mean_i |sum_j x_ij|`` on the (un-normalised) embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.reference.contrastive import Pairs, avg_non_zero

__all__ = ["snr", "snr_contrastive_loss", "zero_mean_penalty"]

Matrix = Sequence[Sequence[float]]


def _variance(row: Sequence[float]) -> float:
    mu = sum(row) / len(row)
    return sum((v - mu) ** 2 for v in row) / (len(row) - 1)


def _unit(row: Sequence[float]) -> list[float]:
    n = max(sum(float(v) ** 2 for v in row) ** 0.5, 1e-12)
    return [float(v) / n for v in row]


def snr(anchor: Sequence[float], other: Sequence[float]) -> float:
    """``Var(other - anchor) / Var(anchor)``."""
    return _variance([float(o) - float(a) for a, o in zip(anchor, other, strict=True)]) / _variance(
        [float(a) for a in anchor]
    )


def zero_mean_penalty(embeddings: Matrix) -> float:
    return sum(abs(sum(float(v) for v in row)) for row in embeddings) / len(embeddings)


def snr_contrastive_loss(
    embeddings: Matrix,
    pairs: Pairs,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    ref_emb: Matrix | None = None,
    normalize: bool = True,
    reg_weight: float = 0.0,
) -> float:
    """The loss over the given pairs; rows are L2-normalised first when ``normalize`` (the distance's default)."""
    query = [_unit(r) if normalize else [float(v) for v in r] for r in embeddings]
    ref_rows = embeddings if ref_emb is None else ref_emb
    ref = [_unit(r) if normalize else [float(v) for v in r] for r in ref_rows]
    a1, p, a2, n = pairs
    pos = [max(0.0, snr(query[i], ref[j]) - pos_margin) for i, j in zip(a1, p, strict=True)]
    neg = [max(0.0, neg_margin - snr(query[i], ref[k])) for i, k in zip(a2, n, strict=True)]
    return avg_non_zero(pos) + avg_non_zero(neg) + reg_weight * zero_mean_penalty(embeddings)
