"""Brute-force float64 oracles for match-threshold calibration, written with plain Python loops.

A pair matches at threshold ``t`` when ``value <= t`` (``value >= t`` for similarities). The candidates are
every distinct value plus one threshold that rejects every pair; each candidate is scored by counting pairs
one by one, and the best candidate is the first (strictest) with the best score. Nothing here uses numpy or
torch: inputs are lists of numbers and booleans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["candidates", "counts", "scores", "best", "roc_auc", "tar_at_far", "eer", "min_max_error_threshold"]


def candidates(values: Sequence[float], higher_is_closer: bool) -> list[float]:
    """The reject-all threshold, then the distinct values from the closest to the farthest."""
    distinct = sorted(set(values), reverse=higher_is_closer)
    reject = math.nextafter(distinct[0], math.inf if higher_is_closer else -math.inf)
    return [reject, *distinct]


def counts(
    values: Sequence[float], same: Sequence[bool], threshold: float, higher_is_closer: bool
) -> tuple[int, int, int, int]:
    """(true accepts, false accepts, genuine pairs, impostor pairs) at ``threshold``."""
    tp = fp = pos = neg = 0
    for value, match in zip(values, same, strict=True):
        accepted = value >= threshold if higher_is_closer else value <= threshold
        if match:
            pos += 1
            tp += accepted
        else:
            neg += 1
            fp += accepted
    return tp, fp, pos, neg


def scores(values: Sequence[float], same: Sequence[bool], threshold: float, higher_is_closer: bool) -> dict:
    """Accuracy, precision (NaN when nothing is accepted), recall/TAR, F1 and FAR at ``threshold``."""
    tp, fp, pos, neg = counts(values, same, threshold, higher_is_closer)
    fn, tn = pos - tp, neg - fp
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / pos
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        "accuracy": (tp + tn) / (pos + neg),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "far": fp / neg,
    }


def best(
    values: Sequence[float],
    same: Sequence[bool],
    target: str,
    higher_is_closer: bool = False,
    min_precision: float | None = None,
    far: float | None = None,
) -> tuple[float, dict] | None:
    """The first (strictest) candidate with the best objective, and its scores; None when none qualifies."""
    chosen = None
    best_score = -math.inf
    for t in candidates(values, higher_is_closer):
        s = scores(values, same, t, higher_is_closer)
        if target == "accuracy":
            objective = s["accuracy"]
        elif target == "f1":
            objective = s["f1"]
        elif target == "precision":
            if math.isnan(s["precision"]) or s["precision"] < min_precision:
                continue
            objective = s["recall"]
        else:
            if s["far"] > far:
                continue
            objective = s["recall"]
        if objective > best_score:
            best_score, chosen = objective, (t, s)
    return chosen


def roc_auc(values: Sequence[float], same: Sequence[bool], higher_is_closer: bool = False) -> float:
    """Probability that a random genuine pair is closer than a random impostor pair, ties counting 1/2."""
    total = wins = 0.0
    for vg, g in zip(values, same, strict=True):
        if not g:
            continue
        for vi, i in zip(values, same, strict=True):
            if i:
                continue
            total += 1
            closer = vg > vi if higher_is_closer else vg < vi
            wins += 1.0 if closer else 0.5 if vg == vi else 0.0
    return wins / total


def tar_at_far(values: Sequence[float], same: Sequence[bool], level: float, higher_is_closer: bool = False) -> float:
    """The highest TAR among candidates whose FAR is at most ``level``."""
    out = 0.0
    for t in candidates(values, higher_is_closer):
        s = scores(values, same, t, higher_is_closer)
        if s["far"] <= level:
            out = max(out, s["recall"])
    return out


def eer(values: Sequence[float], same: Sequence[bool], higher_is_closer: bool = False) -> float:
    """Where the ROC polyline (FAR, TAR), from (0, 0) through every candidate, meets FAR = 1 - TAR."""
    points = []
    for t in candidates(values, higher_is_closer):
        s = scores(values, same, t, higher_is_closer)
        points.append((s["far"], s["recall"]))
    for (f0, t0), (f1, t1) in zip(points, points[1:], strict=False):
        g0, g1 = f0 - (1 - t0), f1 - (1 - t1)
        if g0 < 0 <= g1:
            w = -g0 / (g1 - g0)
            return f0 + w * (f1 - f0)
    raise AssertionError("the ROC curve must cross FAR = FRR")


def min_max_error_threshold(values: Sequence[float], same: Sequence[bool], higher_is_closer: bool = False) -> float:
    """The first candidate whose ``max(FAR, FRR)`` is smallest."""
    chosen, lowest = math.nan, math.inf
    for t in candidates(values, higher_is_closer):
        s = scores(values, same, t, higher_is_closer)
        worst = max(s["far"], 1 - s["recall"])
        if worst < lowest:
            chosen, lowest = t, worst
    return chosen
