"""Plain-loop float64 forward passes of the embedding heads, from their formulas (no dropout: eval mode).

Weights are nested lists: ``weight[o][i]`` maps input feature ``i`` to output ``o``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["linear", "relu", "l2_normalize", "mlp", "skip_connection"]

Matrix = Sequence[Sequence[float]]


def linear(x: Sequence[float], weight: Matrix, bias: Sequence[float] | None) -> list[float]:
    out = []
    for o, row in enumerate(weight):
        total = 0.0 if bias is None else float(bias[o])
        for i, w in enumerate(row):
            total += float(w) * float(x[i])
        out.append(total)
    return out


def relu(x: Sequence[float]) -> list[float]:
    return [v if v > 0 else 0.0 for v in x]


def l2_normalize(x: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in x))
    return [v / max(norm, 1e-12) for v in x]


def mlp(x: Sequence[float], layers: Sequence[tuple[Matrix, Sequence[float]]]) -> list[float]:
    """``Linear -> ReLU`` for every layer but the last, which is a plain ``Linear``."""
    h = list(x)
    for n, (weight, bias) in enumerate(layers):
        h = linear(h, weight, bias)
        if n < len(layers) - 1:
            h = relu(h)
    return h


def skip_connection(
    x: Sequence[float], layers: Sequence[tuple[Matrix, Sequence[float]]], gate: Sequence[float]
) -> list[float]:
    """``x + gate * f(x)`` with ``f`` the ``mlp`` of ``layers``."""
    branch = mlp(x, layers)
    return [float(a) + float(g) * b for a, g, b in zip(x, gate, branch, strict=True)]
