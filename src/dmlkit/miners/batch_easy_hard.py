"""Batch-wise mining of one positive and/or one negative per anchor, by strategy."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_choice, message
from ..indices import all_pairs, label_masks, select_in_place
from ..types import Pairs
from .base import BaseMiner

__all__ = ["BatchEasyHardMiner", "MiningStrategy"]


class MiningStrategy(str, enum.Enum):
    """How ``BatchEasyHardMiner`` picks an anchor's positive or negative."""

    HARD = "hard"  #: the hardest: the farthest positive, the closest negative
    SEMIHARD = "semihard"  #: the hardest that is still easier than the other side's pick
    EASY = "easy"  #: the easiest: the closest positive, the farthest negative
    ALL = "all"  #: every positive (or negative) pair


def check_allowed_range(owner: str, arg: str, value: Any) -> tuple[float, float] | None:
    """``None`` or a ``(low, high)`` pair of numbers with ``low <= high``, returned as floats."""
    if value is None:
        return None
    rule = "None or a (low, high) pair of numbers with low <= high"
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(message(owner, arg, rule, value))
    low, high = value
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
            raise ValueError(message(owner, arg, rule, value))
    if low > high:
        raise ValueError(message(owner, arg, rule, value))
    return float(low), float(high)


def pick_per_row(
    mat: Tensor,
    candidates: Tensor,
    largest: bool,
    allowed_range: tuple[float, float] | None = None,
    beyond: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The largest (or smallest) candidate value of every row.

    Args:
        mat: ``(query, reference)`` distances or similarities.
        candidates: boolean mask of the cells that may be picked.
        largest: pick the largest value (else the smallest).
        allowed_range: only cells with ``low <= value <= high`` may be picked.
        beyond: per-row thresholds that a pick must not reach: values ``< beyond`` when picking the largest,
            ``> beyond`` when picking the smallest (the semihard rule).

    Returns:
        ``(values, columns, found)``: the picked value and its column per row (the first column among
        equal values), and whether the row had any candidate left (else ``values`` is the infinity that
        stands for "nothing").
    """
    keep = candidates.clone()
    if allowed_range is not None:
        keep &= (mat >= allowed_range[0]) & (mat <= allowed_range[1])
    if beyond is not None:
        keep &= mat < beyond.unsqueeze(1) if largest else mat > beyond.unsqueeze(1)
    nothing = -math.inf if largest else math.inf
    found = keep.any(dim=1)
    if mat.shape[1] == 0:
        values = torch.full((mat.shape[0],), nothing, dtype=mat.dtype, device=mat.device)
        return values, torch.zeros(mat.shape[0], dtype=torch.long, device=mat.device), found
    masked = select_in_place(keep, mat.clone(), nothing)
    values, columns = masked.max(dim=1) if largest else masked.min(dim=1)
    return values, columns, found


class BatchEasyHardMiner(BaseMiner):
    """Picks, for every anchor, a positive and a negative by strategy (Xuan, Stylianou, Liu and Pless, 2020,
    "Improved Embeddings with Easy Positive Triplet Mining", WACV, arXiv:1904.04370).

    Xuan et al. pair each anchor with its *easiest* (closest) positive, so that a class may spread into
    several clusters, and its hardest negative that is farther than that positive. Hermans et al. (2017,
    arXiv:1703.07737) pick the hardest of both. This miner covers the combinations: for positives,
    ``"hard"`` is the farthest, ``"easy"`` the closest; for negatives, ``"hard"`` is the closest, ``"easy"``
    the farthest; ``"semihard"`` on one side is the hardest pick of that side that stays easier than the
    other side's pick (a semihard negative is farther than the chosen positive, a semihard positive closer
    than the chosen negative); ``"all"`` keeps every pair of that side. "Far" and "close" follow the
    distance: for a similarity, higher is closer.

    Output (always pairs ``(a1, p, a2, n)``, anchors in increasing order):

    * neither side ``"all"``: one positive and one negative per anchor that has both, ``a1 == a2``;
    * one side ``"all"``: every pair of that side (row-major), and one pick of the other side per anchor;
    * both ``"all"``: every positive and negative pair.

    Args:
        pos_strategy: ``"easy"``, ``"semihard"``, ``"hard"`` or ``"all"``.
        neg_strategy: ``"easy"``, ``"semihard"``, ``"hard"`` or ``"all"``. Both cannot be ``"semihard"``,
            and ``"semihard"`` cannot be combined with ``"all"`` (there would be no pick to compare with).
        allowed_pos_range: ``None`` or ``(low, high)``: only positive pairs whose value lies in the closed
            range are eligible.
        allowed_neg_range: the same for negative pairs.
        **kwargs: ``distance`` (default ``LpDistance()``).

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> miner = BatchEasyHardMiner("easy", "semihard", distance=LpDistance(normalize_embeddings=False))
        >>> emb = torch.tensor([[0.0], [1.0], [4.5], [0.5], [2.0], [5.0]])
        >>> a1, p, a2, n = miner(emb, torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> list(zip(a1.tolist(), p.tolist(), n.tolist()))
        [(0, 1, 4), (1, 0, 5), (2, 1, 3), (3, 4, 2), (4, 3, 0), (5, 4, 1)]
    """

    HARD: ClassVar[MiningStrategy] = MiningStrategy.HARD
    SEMIHARD: ClassVar[MiningStrategy] = MiningStrategy.SEMIHARD
    EASY: ClassVar[MiningStrategy] = MiningStrategy.EASY
    ALL: ClassVar[MiningStrategy] = MiningStrategy.ALL

    def __init__(
        self,
        pos_strategy: str | MiningStrategy = "easy",
        neg_strategy: str | MiningStrategy = "semihard",
        allowed_pos_range: tuple[float, float] | None = None,
        allowed_neg_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        pos = check_choice(name, "pos_strategy", pos_strategy, MiningStrategy)
        neg = check_choice(name, "neg_strategy", neg_strategy, MiningStrategy)
        semihard, every = MiningStrategy.SEMIHARD, MiningStrategy.ALL
        if pos is semihard and neg in (semihard, every):
            raise ValueError(
                message(name, "neg_strategy", "'easy' or 'hard' when `pos_strategy` is 'semihard'", neg.value)
            )
        if neg is semihard and pos is every:
            raise ValueError(
                message(name, "pos_strategy", "'easy' or 'hard' when `neg_strategy` is 'semihard'", pos.value)
            )
        self.pos_strategy = pos.value
        self.neg_strategy = neg.value
        self.allowed_pos_range = check_allowed_range(name, "allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = check_allowed_range(name, "allowed_neg_range", allowed_neg_range)

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Pairs:
        pos, neg = MiningStrategy(self.pos_strategy), MiningStrategy(self.neg_strategy)
        if pos is MiningStrategy.ALL and neg is MiningStrategy.ALL:  # no distance needed
            return all_pairs(labels, ref_labels)
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        closer_is_larger = self.distance.higher_is_closer
        # the hard / semihard positive is the farthest, the hard / semihard negative the closest
        pos_largest = (pos is not MiningStrategy.EASY) != closer_is_larger
        neg_largest = (neg is MiningStrategy.EASY) != closer_is_larger

        def pick_positive(beyond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
            return pick_per_row(mat, positive, pos_largest, self.allowed_pos_range, beyond)

        def pick_negative(beyond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
            return pick_per_row(mat, negative, neg_largest, self.allowed_neg_range, beyond)

        anchors = torch.arange(mat.shape[0], device=mat.device)
        if pos is MiningStrategy.ALL:
            _, n, found = pick_negative()
            a1, p = torch.nonzero(positive, as_tuple=True)
            return Pairs(a1, p, anchors[found], n[found])
        if neg is MiningStrategy.ALL:
            _, p, found = pick_positive()
            a2, n = torch.nonzero(negative, as_tuple=True)
            return Pairs(anchors[found], p[found], a2, n)
        if pos is MiningStrategy.SEMIHARD:
            neg_values, n, neg_found = pick_negative()
            _, p, pos_found = pick_positive(beyond=neg_values)
        elif neg is MiningStrategy.SEMIHARD:
            pos_values, p, pos_found = pick_positive()
            _, n, neg_found = pick_negative(beyond=pos_values)
        else:
            _, p, pos_found = pick_positive()
            _, n, neg_found = pick_negative()
        keep = pos_found & neg_found
        a = anchors[keep]
        return Pairs(a, p[keep], a.clone(), n[keep])
