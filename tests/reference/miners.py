"""Naive float64 oracles for the miners, written with plain Python loops from the papers' rules.

Every function takes nested lists (``to_lists`` of tensors) and returns lists of index tuples, so the
oracles share no code path with the library. Distances come from ``tests.reference.triplet``.

* Angular (Wang et al., 2017, arXiv:1708.01682): the angle at the negative of triplet (a, p, n) is
  ``atan(||a - p|| / (2 ||n - (a + p) / 2||))`` on L2-normalised embeddings.
* Batch easy/hard (Xuan et al., 2020, WACV; Hermans et al., 2017, arXiv:1703.07737): per anchor, the
  closest / farthest positive and negative, with the semihard rule relative to the other side's pick.
* Distance weighted (Wu et al., 2017, arXiv:1706.07567): negatives drawn with probability proportional to
  ``1 / q(max(d, cutoff))`` for ``d < nonzero_loss_cutoff``, ``q(d) = d^(k-2) (1 - d^2/4)^((k-3)/2)``.
* HDC (Yuan et al., 2017, arXiv:1611.05720): the hardest ``ceil(f * count)`` positive and negative pairs.
* Multi-similarity (Wang et al., 2019, arXiv:1904.06627): pairs compared with the anchor's hardest pair of
  the other kind, up to ``epsilon``.
* Pair margin: positive pairs beyond ``pos_margin``, negative pairs within ``neg_margin``.
* Uniform histogram: equal-width bins over ``[min, max]`` of the pair values, last bin closed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

__all__ = [
    "Pair",
    "Triplet",
    "pairs_of",
    "angular_triplets",
    "batch_easy_hard",
    "batch_hard",
    "distance_weighted_probabilities",
    "hdc",
    "multi_similarity",
    "pair_margin",
    "histogram_bins",
]

Pair = tuple[int, int]
Triplet = tuple[int, int, int]
Matrix = Sequence[Sequence[float]]


def pairs_of(labels: Sequence[int], ref_labels: Sequence[int] | None = None) -> tuple[list[Pair], list[Pair]]:
    """Positive and negative (query, reference) pairs, row-major; no self-pairs without a reference set."""
    same_set = ref_labels is None
    ref = labels if ref_labels is None else ref_labels
    pos, neg = [], []
    for i, li in enumerate(labels):
        for j, lj in enumerate(ref):
            if li == lj and not (same_set and i == j):
                pos.append((i, j))
            elif li != lj:
                neg.append((i, j))
    return pos, neg


def _unit(v: Sequence[float]) -> list[float]:
    norm = max(math.sqrt(sum(float(c) ** 2 for c in v)), 1e-12)
    return [float(c) / norm for c in v]


def _euclid(x: Sequence[float], y: Sequence[float]) -> float:
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x, y, strict=True)))


def angular_triplets(
    embeddings: Matrix,
    labels: Sequence[int],
    angle_degrees: float,
    ref_emb: Matrix | None = None,
    ref_labels: Sequence[int] | None = None,
) -> list[Triplet]:
    """Triplets whose angle at the negative is strictly above the threshold, in (a, p, n) order."""
    query = [_unit(v) for v in embeddings]
    ref = query if ref_emb is None else [_unit(v) for v in ref_emb]
    ref_lab = labels if ref_labels is None else ref_labels
    threshold = math.radians(angle_degrees)
    pos, _ = pairs_of(labels, ref_labels)
    out = []
    for a, p in pos:
        center = [(x + y) / 2 for x, y in zip(query[a], ref[p], strict=True)]
        side = _euclid(query[a], ref[p])
        for n, ln in enumerate(ref_lab):
            if ln == labels[a]:
                continue
            if math.atan2(side, 2 * _euclid(ref[n], center)) > threshold:
                out.append((a, p, n))
    return out


def _pick(
    row: Sequence[float],
    candidates: Sequence[int],
    largest: bool,
    allowed: tuple[float, float] | None,
    beyond: float | None,
) -> int | None:
    """The candidate column with the largest (smallest) value, lowest index among ties."""
    best: int | None = None
    for j in candidates:
        v = row[j]
        if allowed is not None and not allowed[0] <= v <= allowed[1]:
            continue
        if beyond is not None and not (v < beyond if largest else v > beyond):
            continue
        if best is None or (v > row[best] if largest else v < row[best]):
            best = j
    return best


def batch_easy_hard(
    mat: Matrix,
    labels: Sequence[int],
    pos_strategy: str,
    neg_strategy: str,
    similarity: bool,
    ref_labels: Sequence[int] | None = None,
    pos_range: tuple[float, float] | None = None,
    neg_range: tuple[float, float] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """(positive pairs, negative pairs) chosen per anchor by strategy.

    Hard positive = farthest, easy positive = closest; hard negative = closest, easy negative = farthest;
    "far" is a large distance or a small similarity. Semihard: the hard pick among those strictly easier
    than the other side's pick. "all": every pair of that side. Without "all", only anchors with both a
    positive and a negative pick count.
    """
    pos_pairs, neg_pairs = pairs_of(labels, ref_labels)
    pos_of: dict[int, list[int]] = {a: [] for a in range(len(labels))}
    neg_of: dict[int, list[int]] = {a: [] for a in range(len(labels))}
    for a, p in pos_pairs:
        pos_of[a].append(p)
    for a, n in neg_pairs:
        neg_of[a].append(n)
    far_is_large = not similarity
    pos_largest = far_is_large if pos_strategy in ("hard", "semihard") else not far_is_large
    neg_largest = (not far_is_large) if neg_strategy in ("hard", "semihard") else far_is_large
    out_pos: list[Pair] = []
    out_neg: list[Pair] = []
    for a in range(len(labels)):
        row = mat[a]
        if pos_strategy == "semihard":
            n = _pick(row, neg_of[a], neg_largest, neg_range, None)
            p = _pick(row, pos_of[a], pos_largest, pos_range, row[n] if n is not None else None)
        elif neg_strategy == "semihard":
            p = _pick(row, pos_of[a], pos_largest, pos_range, None)
            n = _pick(row, neg_of[a], neg_largest, neg_range, row[p] if p is not None else None)
        else:
            p = _pick(row, pos_of[a], pos_largest, pos_range, None) if pos_strategy != "all" else None
            n = _pick(row, neg_of[a], neg_largest, neg_range, None) if neg_strategy != "all" else None
        if pos_strategy == "all":
            if n is not None:
                out_neg.append((a, n))
        elif neg_strategy == "all":
            if p is not None:
                out_pos.append((a, p))
        elif p is not None and n is not None:
            out_pos.append((a, p))
            out_neg.append((a, n))
    if pos_strategy == "all":
        out_pos = list(pos_pairs)
    if neg_strategy == "all":
        out_neg = list(neg_pairs)
    return out_pos, out_neg


def batch_hard(
    mat: Matrix, labels: Sequence[int], similarity: bool, ref_labels: Sequence[int] | None = None
) -> list[Triplet]:
    """(anchor, farthest positive, closest negative) for every anchor that has both."""
    pos, neg = batch_easy_hard(mat, labels, "hard", "hard", similarity, ref_labels)
    return [(a, p, n) for (a, p), (_, n) in zip(pos, neg, strict=True)]


def distance_weighted_probabilities(
    embeddings: Matrix,
    labels: Sequence[int],
    cutoff: float,
    nonzero_loss_cutoff: float,
    ref_emb: Matrix | None = None,
    ref_labels: Sequence[int] | None = None,
) -> list[list[float]]:
    """Per anchor, the probability of drawing each reference element as its negative (rows of zeros when none)."""
    query = [_unit(v) for v in embeddings]
    ref = query if ref_emb is None else [_unit(v) for v in ref_emb]
    ref_lab = labels if ref_labels is None else ref_labels
    k = len(embeddings[0])
    out = []
    for a, la in enumerate(labels):
        logs: list[float | None] = []
        for n, ln in enumerate(ref_lab):
            d = max(_euclid(query[a], ref[n]), cutoff)
            inside = 1.0 - d * d / 4.0
            if ln == la or d >= nonzero_loss_cutoff or d <= 0.0 or inside <= 0.0:
                logs.append(None)
                continue
            # weight = 1 / q(d), q(d) = d^(k-2) (1 - d^2/4)^((k-3)/2)
            logs.append(-(k - 2) * math.log(d) - (k - 3) / 2 * math.log(inside))
        finite = [x for x in logs if x is not None]
        if not finite:
            out.append([0.0] * len(ref_lab))
            continue
        top = max(finite)
        weights = [0.0 if x is None else math.exp(x - top) for x in logs]
        total = sum(weights)
        out.append([w / total for w in weights])
    return out


def _hardest(pairs: Sequence[Pair], mat: Matrix, fraction: float, largest: bool) -> list[Pair]:
    k = math.ceil(Fraction(str(fraction)) * len(pairs))

    def hardness(i: int) -> tuple[float, int]:
        value = mat[pairs[i][0]][pairs[i][1]]
        return (-value if largest else value, i)

    chosen = sorted(sorted(range(len(pairs)), key=hardness)[:k])
    return [pairs[i] for i in chosen]


def hdc(
    mat: Matrix,
    fraction: float,
    similarity: bool,
    pos_pairs: Sequence[Pair],
    neg_pairs: Sequence[Pair],
) -> tuple[list[Pair], list[Pair]]:
    """The hardest ``ceil(fraction * count)`` of each kind, in their given order (earlier wins ties)."""
    far_is_large = not similarity
    return _hardest(pos_pairs, mat, fraction, far_is_large), _hardest(neg_pairs, mat, fraction, not far_is_large)


def multi_similarity(
    mat: Matrix, labels: Sequence[int], epsilon: float, similarity: bool, ref_labels: Sequence[int] | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Pairs kept by the multi-similarity rule (empty if the batch lacks positive or negative pairs)."""
    pos, neg = pairs_of(labels, ref_labels)
    if not pos or not neg:
        return [], []
    out_pos, out_neg = [], []
    for a in range(len(labels)):
        p_values = [mat[a][j] for i, j in pos if i == a]
        n_values = [mat[a][j] for i, j in neg if i == a]
        for i, j in pos:
            if i != a or not n_values:
                continue
            v = mat[i][j]
            if (v - epsilon < max(n_values)) if similarity else (v + epsilon > min(n_values)):
                out_pos.append((i, j))
        for i, j in neg:
            if i != a or not p_values:
                continue
            v = mat[i][j]
            if (v + epsilon > min(p_values)) if similarity else (v - epsilon < max(p_values)):
                out_neg.append((i, j))
    return out_pos, out_neg


def pair_margin(
    mat: Matrix,
    labels: Sequence[int],
    pos_margin: float,
    neg_margin: float,
    similarity: bool,
    ref_labels: Sequence[int] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """Positive pairs beyond ``pos_margin`` and negative pairs within ``neg_margin``, row-major."""
    pos, neg = pairs_of(labels, ref_labels)
    if similarity:
        return [(i, j) for i, j in pos if mat[i][j] < pos_margin], [(i, j) for i, j in neg if mat[i][j] > neg_margin]
    return [(i, j) for i, j in pos if mat[i][j] > pos_margin], [(i, j) for i, j in neg if mat[i][j] < neg_margin]


def histogram_bins(values: Sequence[float], edges: Sequence[float]) -> list[int | None]:
    """The bin of each value: ``edges[i] <= v < edges[i + 1]``, the last bin closed; ``None`` if outside."""
    last = len(edges) - 2
    out: list[int | None] = []
    for v in values:
        found = None
        for i in range(last + 1):
            if edges[i] <= v and (v < edges[i + 1] if i < last else v <= edges[i + 1]):
                found = i
                break
        out.append(found)
    return out
