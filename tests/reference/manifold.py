"""Naive float64 oracle for the manifold similarity loss, with plain Python loops.

Aziere and Todorovic, 2019, "Ensemble Deep Manifold Similarity Learning Using Hard Proxies", CVPR. The ``N``
embeddings and ``K`` proxies are the nodes of a graph with affinities ``A_uv = exp(max(cos(u, v), 0) / width)``
(``A_uu = 0``); the random walk's closed form gives ``F = (1 - alpha) (I - alpha D^-1/2 A D^-1/2)^-1``
(``D``: row sums of ``A``), here inverted by Gauss-Jordan elimination. For sample ``i`` with proxy ``y_i``:

    int_i = log(1 + sum_{k != y_i, v > 0} exp(v)),  v = F[i][N+k] - F[i][N+y_i] + margin
    ctx_i = log(1 + sum_{k != y_i, u > 0} exp(u)),  u = cos(F[i], F[N+k]) - cos(F[i], F[N+y_i]) + margin

and the loss is the batch mean of ``int_i + lambda_c ctx_i`` (``ctx_i`` alone for an infinite ``lambda_c``).
"""

from __future__ import annotations

import math

__all__ = ["invert", "manifold_similarities", "manifold_loss"]

Matrix = list[list[float]]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cos(a: list[float], b: list[float]) -> float:
    return _dot(a, b) / math.sqrt(_dot(a, a) * _dot(b, b))


def invert(m: Matrix) -> Matrix:
    """Gauss-Jordan elimination with partial pivoting."""
    n = len(m)
    work = [list(row) + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(work[r][col]))
        work[col], work[pivot] = work[pivot], work[col]
        lead = work[col][col]
        work[col] = [v / lead for v in work[col]]
        for r in range(n):
            if r != col and work[r][col] != 0.0:
                factor = work[r][col]
                work[r] = [a - factor * b for a, b in zip(work[r], work[col], strict=True)]
    return [row[n:] for row in work]


def manifold_similarities(nodes: Matrix, alpha: float, width: float = 0.5) -> Matrix:
    n = len(nodes)
    affinity = [
        [0.0 if u == v else math.exp(max(_cos(nodes[u], nodes[v]), 0.0) / width) for v in range(n)] for u in range(n)
    ]
    degree = [sum(row) for row in affinity]
    system = [
        [(1.0 if u == v else 0.0) - alpha * affinity[u][v] / math.sqrt(degree[u] * degree[v]) for v in range(n)]
        for u in range(n)
    ]
    return [[(1 - alpha) * v for v in row] for row in invert(system)]


def _hinge_log_sum(scores: list[float], own: int, margin: float) -> float:
    total = 0.0
    for k, s in enumerate(scores):
        v = s - scores[own] + margin
        if k != own and v > 0:
            total += math.exp(v)
    return math.log(1.0 + total)


def manifold_loss(
    emb: Matrix,
    proxies: Matrix,
    labels: list[int],
    lambda_c: float = 1.0,
    alpha: float = 0.8,
    margin: float = 5e-4,
    width: float = 0.5,
) -> float:
    n, k = len(emb), len(proxies)
    f = manifold_similarities(emb + proxies, alpha, width)
    total = 0.0
    for i in range(n):
        intrinsic = _hinge_log_sum([f[i][n + j] for j in range(k)], labels[i], margin)
        context = _hinge_log_sum([_cos(f[i], f[n + j]) for j in range(k)], labels[i], margin)
        if math.isinf(lambda_c):
            total += context
        else:
            total += intrinsic + (lambda_c * context if lambda_c else 0.0)
    return total / n
