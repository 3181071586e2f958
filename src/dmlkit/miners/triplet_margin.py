from __future__ import annotations

import enum
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice, check_range
from ..indices import label_masks, triplets_from_selection
from ..types import Triplets
from .base import BaseMiner

__all__ = ["TripletMarginMiner", "TripletType"]

#: how many (positive pair, reference) cells one mining block may hold.
_BLOCK_CELLS = 1 << 22


class TripletType(str, enum.Enum):
    """Which triplets ``TripletMarginMiner`` returns, by their gap ``d(a, n) - d(a, p)``."""

    ALL = "all"  #: gap <= margin: every triplet that violates the margin
    HARD = "hard"  #: gap <= 0: the negative is at least as close as the positive
    SEMIHARD = "semihard"  #: 0 < gap <= margin
    EASY = "easy"  #: gap > margin: already satisfied


class TripletMarginMiner(BaseMiner):
    """Mines triplets by how much they violate a margin (Schroff et al., 2015, arXiv:1503.03832).

    For every triplet (a, p, n) the gap is ``d(a, n) - d(a, p)`` (``s(a, p) - s(a, n)`` for similarities);
    ``type_of_triplets`` selects ``"all"`` (gap <= margin), ``"hard"`` (gap <= 0), ``"semihard"``
    (0 < gap <= margin) or ``"easy"`` (gap > margin). Triplets come in (a, p, n) lexicographic order.
    Positive pairs are scanned in blocks against the reference set, so work and memory grow with the
    number of candidate triplets, never with ``batch_size ** 3``.

    Args:
        margin: ``>= 0``.
        type_of_triplets: one of ``"all"``, ``"hard"``, ``"semihard"``, ``"easy"``; anything else is an error.
        **kwargs: ``distance``.

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> miner = TripletMarginMiner(0.2, "hard", distance=LpDistance(normalize_embeddings=False))
        >>> a, p, n = miner(torch.tensor([[0.0], [1.0], [0.5], [3.0]]), torch.tensor([0, 0, 1, 1]))
        >>> a.tolist(), p.tolist(), n.tolist()
        ([0, 1, 2, 2, 3], [1, 0, 3, 3, 2], [2, 2, 0, 1, 1])
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str | TripletType = "all", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        self.margin = margin
        self.type_of_triplets = check_choice(name, "type_of_triplets", type_of_triplets, TripletType).value

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Triplets:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        anchors, positives = torch.nonzero(positive, as_tuple=True)
        block = max(1, _BLOCK_CELLS // max(1, mat.shape[1]))
        # One byte per candidate triplet first; the triplets are then written once at their final size.
        selected: list[Tensor] = []
        for start in range(0, anchors.numel(), block):
            a = anchors[start : start + block]
            gap = self.distance.gap(mat[a, positives[start : start + block]].unsqueeze(1), mat[a])
            keep = self._select(gap)
            keep &= negative[a]
            selected.append(keep)
        return triplets_from_selection(anchors, positives, selected, block)

    def _select(self, gap: Tensor) -> Tensor:
        kind = TripletType(self.type_of_triplets)
        if kind is TripletType.EASY:
            return gap > self.margin
        keep = gap <= self.margin
        if kind is TripletType.HARD:
            keep &= gap <= 0
        elif kind is TripletType.SEMIHARD:
            keep &= gap > 0
        return keep
