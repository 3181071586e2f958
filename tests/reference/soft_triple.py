"""Naive float64 oracle for the SoftTriple loss, with plain Python loops.

Qian, Shang, Sun, Hu, Li and Jin, 2019, "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling",
arXiv:1909.05235: with ``K`` centres per class and centre similarities ``s_ck = s(x, w_c^k)``, the relaxed
similarity is ``S_c = sum_k softmax_k(s_ck / gamma) s_ck``, and the loss of a sample is
``-log(exp(la (S_y - margin)) / (exp(la (S_y - margin)) + sum_{c != y} exp(la S_c)))``. Centres are given
class after class (centre ``k`` of class ``c`` is row ``c * K + k``). Optional per-sample weights multiply the
losses; the result is the batch mean.
"""

from __future__ import annotations

import math

__all__ = ["relaxed_similarities", "soft_triple_loss"]

Matrix = list[list[float]]


def relaxed_similarities(mat: Matrix, num_classes: int, k: int, gamma: float) -> Matrix:
    """``S[i][c]`` from the (sample x centre) similarity matrix ``mat``."""
    out = []
    for row in mat:
        relaxed = []
        for c in range(num_classes):
            sims = row[c * k : (c + 1) * k]
            top = max(sims)
            weights = [math.exp((s - top) / gamma) for s in sims]
            total = sum(weights)
            relaxed.append(sum(w * s for w, s in zip(weights, sims, strict=True)) / total)
        out.append(relaxed)
    return out


def soft_triple_loss(
    mat: Matrix,
    labels: list[int],
    num_classes: int,
    k: int,
    la: float = 20.0,
    gamma: float = 0.1,
    margin: float = 0.01,
    weights: list[float] | None = None,
) -> float:
    relaxed = relaxed_similarities(mat, num_classes, k, gamma)
    values = []
    for i, row in enumerate(relaxed):
        logits = [la * (s - (margin if c == labels[i] else 0.0)) for c, s in enumerate(row)]
        top = max(logits)
        values.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[labels[i]])
    if weights is not None:
        values = [v * w for v, w in zip(values, weights, strict=True)]
    return sum(values) / len(values)
