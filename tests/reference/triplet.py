"""Naive float64 oracles for the triplet margin loss and miner, written with plain Python loops.

Schroff, Kalenichenko and Philbin, 2015, "FaceNet: A Unified Embedding for Face Recognition and Clustering",
arXiv:1503.03832: a triplet (anchor a, positive p, negative n) is satisfied when the negative is farther
from the anchor than the positive by at least ``margin``; its loss is ``max(0, d(a, p) - d(a, n) + margin)``.
The "swap" variant (Balntas et al., 2016, BMVC) replaces ``d(a, n)`` by ``min(d(a, n), d(p, n))``.
For a similarity ``s`` (higher is closer) the gap ``d(a, n) - d(a, p)`` becomes ``s(a, p) - s(a, n)``.

Nothing here uses torch: inputs are nested lists (or anything ``float()``/``int()`` accepts element-wise),
so the oracle shares no code path with the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DistanceSpec",
    "LP",
    "COSINE",
    "to_lists",
    "distance_matrix",
    "all_triplets",
    "all_pairs",
    "triplet_gaps",
    "triplet_values",
    "avg_non_zero",
    "triplet_margin_loss",
    "mine_triplets",
]

Matrix = list[list[float]]


@dataclass(frozen=True)
class DistanceSpec:
    """``kind`` is ``"lp"`` (a distance) or ``"cosine"`` (a similarity)."""

    kind: str = "lp"
    p: float = 2.0
    power: float = 1.0
    normalize: bool = True

    @property
    def is_similarity(self) -> bool:
        return self.kind == "cosine"


LP = DistanceSpec("lp")
COSINE = DistanceSpec("cosine")


def to_lists(x: object) -> list:
    """A tensor or array as nested Python lists of floats/ints."""
    tolist = getattr(x, "tolist", None)
    return tolist() if tolist is not None else list(x)  # type: ignore[call-overload]


def _norm(v: Sequence[float], p: float) -> float:
    return sum(abs(float(c)) ** p for c in v) ** (1.0 / p)


def _normalized(v: Sequence[float], p: float) -> list[float]:
    n = max(_norm(v, p), 1e-12)
    return [float(c) / n for c in v]


def _compare(x: Sequence[float], y: Sequence[float], spec: DistanceSpec) -> float:
    if spec.kind == "cosine":
        x, y = _normalized(x, 2.0), _normalized(y, 2.0)
        value = sum(float(a) * float(b) for a, b in zip(x, y, strict=True))
    elif spec.kind == "lp":
        if spec.normalize:
            x, y = _normalized(x, spec.p), _normalized(y, spec.p)
        value = sum(abs(float(a) - float(b)) ** spec.p for a, b in zip(x, y, strict=True)) ** (1.0 / spec.p)
    else:
        raise ValueError(spec.kind)
    return value**spec.power


def distance_matrix(query: Sequence[Sequence[float]], ref: Sequence[Sequence[float]], spec: DistanceSpec) -> Matrix:
    return [[_compare(q, r, spec) for r in ref] for q in query]


def all_pairs(labels: Sequence[int], ref_labels: Sequence[int] | None = None) -> tuple[list, list, list, list]:
    """Positive (a, p) and negative (a, n) pairs in row-major order; no self-pairs when there is no reference."""
    same_set = ref_labels is None
    ref = labels if ref_labels is None else ref_labels
    a1, p, a2, n = [], [], [], []
    for i, li in enumerate(labels):
        for j, lj in enumerate(ref):
            if li == lj and not (same_set and i == j):
                a1.append(i)
                p.append(j)
            elif li != lj:
                a2.append(i)
                n.append(j)
    return a1, p, a2, n


def all_triplets(labels: Sequence[int], ref_labels: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """Every (a, p, n) with ``labels[a] == ref[p] != ref[n]`` (and ``a != p`` without a reference), sorted."""
    same_set = ref_labels is None
    ref = labels if ref_labels is None else ref_labels
    out = []
    for a, la in enumerate(labels):
        for p, lp in enumerate(ref):
            if lp != la or (same_set and a == p):
                continue
            for n, ln in enumerate(ref):
                if ln != la:
                    out.append((a, p, n))
    return out


def _gap(d_ap: float, d_an: float, spec: DistanceSpec) -> float:
    """How much closer the positive is than the negative."""
    return d_ap - d_an if spec.is_similarity else d_an - d_ap


def triplet_gaps(
    embeddings: Sequence[Sequence[float]],
    triplets: Sequence[tuple[int, int, int]],
    spec: DistanceSpec = LP,
    ref_emb: Sequence[Sequence[float]] | None = None,
) -> list[float]:
    """The gap of each triplet (no swap): ``d(a, n) - d(a, p)``, or ``s(a, p) - s(a, n)``."""
    ref = embeddings if ref_emb is None else ref_emb
    return [
        _gap(_compare(embeddings[a], ref[p], spec), _compare(embeddings[a], ref[n], spec), spec) for a, p, n in triplets
    ]


def triplet_values(
    embeddings: Sequence[Sequence[float]],
    triplets: Sequence[tuple[int, int, int]],
    margin: float,
    spec: DistanceSpec = LP,
    swap: bool = False,
    smooth: bool = False,
    ref_emb: Sequence[Sequence[float]] | None = None,
) -> list[float]:
    """The loss of each triplet, ``max(0, margin - gap)`` or ``log(1 + exp(margin - gap))``."""
    ref = embeddings if ref_emb is None else ref_emb
    values = []
    for a, p, n in triplets:
        d_ap = _compare(embeddings[a], ref[p], spec)
        d_an = _compare(embeddings[a], ref[n], spec)
        if swap:
            d_pn = _compare(ref[p], ref[n], spec)
            # the closer of the two negatives' comparisons is the harder one
            d_an = max(d_an, d_pn) if spec.is_similarity else min(d_an, d_pn)
        violation = margin - _gap(d_ap, d_an, spec)
        if smooth:
            # numerically stable log(1 + exp(v))
            values.append(max(violation, 0.0) + math.log1p(math.exp(-abs(violation))))
        else:
            values.append(max(violation, 0.0))
    return values


def avg_non_zero(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0]
    return sum(positive) / len(positive) if positive else 0.0


def triplet_margin_loss(
    embeddings: object,
    labels: object,
    margin: float = 0.05,
    spec: DistanceSpec = LP,
    swap: bool = False,
    smooth: bool = False,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    triplets: Sequence[tuple[int, int, int]] | None = None,
) -> float:
    """Mean of the positive triplet losses over all valid triplets (or the given ones)."""
    emb = to_lists(embeddings)
    ref = None if ref_emb is None else to_lists(ref_emb)
    if triplets is None:
        lab = to_lists(labels)
        triplets = all_triplets(lab, None if ref_labels is None else to_lists(ref_labels))
    return avg_non_zero(triplet_values(emb, triplets, margin, spec, swap, smooth, ref))


def mine_triplets(
    embeddings: object,
    labels: object,
    margin: float,
    type_of_triplets: str,
    spec: DistanceSpec = LP,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
) -> list[tuple[int, int, int]]:
    """Triplets whose gap ``g`` satisfies: all ``g <= m``, hard ``g <= 0``, semihard ``0 < g <= m``, easy ``g > m``."""
    emb = to_lists(embeddings)
    ref = emb if ref_emb is None else to_lists(ref_emb)
    lab = to_lists(labels)
    candidates = all_triplets(lab, None if ref_labels is None else to_lists(ref_labels))
    chosen = []
    for a, p, n in candidates:
        g = _gap(_compare(emb[a], ref[p], spec), _compare(emb[a], ref[n], spec), spec)
        keep = {
            "all": g <= margin,
            "hard": g <= 0,
            "semihard": 0 < g <= margin,
            "easy": g > margin,
        }[type_of_triplets]
        if keep:
            chosen.append((a, p, n))
    return chosen
