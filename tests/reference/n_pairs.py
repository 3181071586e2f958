"""Naive float64 oracle for the multi-class N-pair loss, with plain Python loops.

Sohn, 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 29, eq. (6):
given ``N`` pairs ``(a_k, p_k)`` of ``N`` distinct classes, every anchor classifies its own positive among
the ``N`` positives::

    -log( exp(s(a_k, p_k)) / sum_l exp(s(a_k, p_l)) )

Pairs: for each anchor label (in increasing label order), the first listed positive pair whose anchor has it.
"""

from __future__ import annotations

import math

__all__ = ["first_pair_per_label", "n_pairs_values", "n_pairs_loss"]

Matrix = list[list[float]]


def first_pair_per_label(positive_pairs: list[tuple[int, int]], labels: list[int]) -> list[tuple[int, int]]:
    chosen: dict[int, tuple[int, int]] = {}
    for a, p in positive_pairs:
        if labels[a] not in chosen:
            chosen[labels[a]] = (a, p)
    return [chosen[label] for label in sorted(chosen)]


def n_pairs_values(mat: Matrix, pairs: list[tuple[int, int]], higher_is_closer: bool = True) -> list[float]:
    """One value per chosen pair; ``mat`` compares every batch element with every other."""
    sign = 1.0 if higher_is_closer else -1.0
    values = []
    for a, p in pairs:
        logits = [sign * mat[a][q] for _, q in pairs]
        target = sign * mat[a][p]
        top = max(logits)
        values.append(top + math.log(sum(math.exp(x - top) for x in logits)) - target)
    return values


def n_pairs_loss(
    mat: Matrix, positive_pairs: list[tuple[int, int]], labels: list[int], higher_is_closer: bool = True
) -> float:
    values = n_pairs_values(mat, first_pair_per_label(positive_pairs, labels), higher_is_closer)
    return sum(values) / len(values) if values else 0.0
