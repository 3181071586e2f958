"""Naive float64 oracle for the supervised contrastive loss, with plain Python loops.

Khosla et al., 2020, "Supervised Contrastive Learning", arXiv:2004.11362, eq. (2) ("L_out"): for anchor
``i`` with positives ``P(i)`` and candidates ``A(i)`` (positives and negatives),

    -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )

An anchor without positives contributes 0; the loss is the mean of the positive values (the values are
positive whenever ``A(i)`` holds more than the positives). ``s = -d`` for a distance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["supcon_values", "supcon_loss"]

Matrix = list[list[float]]


def supcon_values(
    mat: Matrix,
    positive_pairs: Iterable[tuple[int, int]],
    negative_pairs: Iterable[tuple[int, int]],
    temperature: float,
    higher_is_closer: bool = True,
) -> list[float]:
    """One value per query row."""
    positives = set(positive_pairs)
    negatives = set(negative_pairs)
    sign = 1.0 if higher_is_closer else -1.0
    values = []
    for i, row in enumerate(mat):
        logits = [sign * v / temperature for v in row]
        pos = [j for j in range(len(row)) if (i, j) in positives]
        candidates = [logits[j] for j in range(len(row)) if (i, j) in positives or (i, j) in negatives]
        if not pos:
            values.append(0.0)
            continue
        top = max(candidates)
        log_denominator = top + math.log(sum(math.exp(x - top) for x in candidates))
        total = 0.0
        for j in pos:
            total += logits[j] - log_denominator
        values.append(-total / len(pos))
    return values


def supcon_loss(
    mat: Matrix,
    positive_pairs: Iterable[tuple[int, int]],
    negative_pairs: Iterable[tuple[int, int]],
    temperature: float = 0.1,
    higher_is_closer: bool = True,
) -> float:
    """Mean of the values above 0; 0 when there is none or when there is no negative pair at all."""
    negative_pairs = list(negative_pairs)
    if not negative_pairs:
        return 0.0
    values = [v for v in supcon_values(mat, positive_pairs, negative_pairs, temperature, higher_is_closer) if v > 0]
    return sum(values) / len(values) if values else 0.0
