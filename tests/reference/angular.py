"""Naive float64 oracle for the angular loss, written with plain Python loops.

Wang, Zhou, Wen, Liu and Lin, 2017, "Deep Metric Learning with Angular Loss", arXiv:1708.01682, eq. 8 (the
N-pair form): for a positive pair (a, p) and every negative n of a, on L2-normalised features,
``f(a, p, n) = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p`` and the pair's loss is
``log(1 + sum_n exp(f(a, p, n)))``; the batch loss is the mean over the positive pairs.

No torch here: inputs are nested lists or anything with ``tolist()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["normalized", "angular_pair_values", "angular_loss"]


def _tolist(x: object) -> list:
    tolist = getattr(x, "tolist", None)
    return tolist() if tolist is not None else list(x)  # type: ignore[call-overload]


def normalized(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(float(c) * float(c) for c in v))
    norm = max(norm, 1e-12)
    return [float(c) / norm for c in v]


def _dot(x: Sequence[float], y: Sequence[float]) -> float:
    return sum(a * b for a, b in zip(x, y, strict=True))


def _log1p_sum_exp(xs: Sequence[float]) -> float:
    """``log(1 + sum(exp(x)))`` without overflow."""
    if not xs:
        return 0.0
    top = max(max(xs), 0.0)
    return top + math.log(math.exp(-top) + sum(math.exp(x - top) for x in xs))


def angular_pair_values(
    embeddings: object,
    labels: object,
    alpha_degrees: float,
    pairs: Sequence[tuple[int, int]] | None = None,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    normalize_negatives: bool = True,
) -> list[float]:
    """One loss per positive pair (all pairs from the labels when ``pairs`` is None).

    ``normalize_negatives=False`` reproduces pytorch-metric-learning 2.9.0, which normalises anchors and
    positives but takes the negatives as given.
    """
    emb = [[float(c) for c in row] for row in _tolist(embeddings)]
    lab = [int(v) for v in _tolist(labels)]
    same_set = ref_emb is None
    ref = emb if ref_emb is None else [[float(c) for c in row] for row in _tolist(ref_emb)]
    ref_lab = lab if ref_labels is None else [int(v) for v in _tolist(ref_labels)]
    if pairs is None:
        pairs = [
            (i, j)
            for i in range(len(emb))
            for j in range(len(ref))
            if lab[i] == ref_lab[j] and not (same_set and i == j)
        ]
    sq_tan = math.tan(math.radians(alpha_degrees)) ** 2
    values = []
    for a, p in pairs:
        xa, xp = normalized(emb[a]), normalized(ref[p])
        ap = _dot(xa, xp)
        logits = []
        for n in range(len(ref)):
            if ref_lab[n] == lab[a]:
                continue
            xn = normalized(ref[n]) if normalize_negatives else ref[n]
            centre_dot = _dot([u + v for u, v in zip(xa, xp, strict=True)], xn)
            logits.append(4 * sq_tan * centre_dot - 2 * (1 + sq_tan) * ap)
        values.append(_log1p_sum_exp(logits))
    return values


def angular_loss(
    embeddings: object,
    labels: object,
    alpha_degrees: float = 40,
    pairs: Sequence[tuple[int, int]] | None = None,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    normalize_negatives: bool = True,
) -> float:
    """Mean of :func:`angular_pair_values` (0 without positive pairs)."""
    values = angular_pair_values(embeddings, labels, alpha_degrees, pairs, ref_emb, ref_labels, normalize_negatives)
    return sum(values) / len(values) if values else 0.0
