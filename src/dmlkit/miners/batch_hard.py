"""Batch-hard mining: the hardest positive and the hardest negative of every anchor."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..indices import label_masks
from ..types import Triplets
from .base import BaseMiner
from .batch_easy_hard import check_allowed_range, pick_per_row

__all__ = ["BatchHardMiner"]


class BatchHardMiner(BaseMiner):
    """One triplet per anchor: its hardest positive and hardest negative (Hermans, Beyer and Leibe, 2017,
    "In Defense of the Triplet Loss for Person Re-Identification", arXiv:1703.07737).

    The hardest positive is the farthest one, the hardest negative the closest one (for a similarity,
    higher is closer). Anchors without a positive or a negative are skipped; triplets come in increasing
    anchor order; among equally hard candidates the lowest index wins.

    Args:
        allowed_pos_range: ``None`` or ``(low, high)``: only positive pairs whose value lies in the closed
            range are eligible (as for ``BatchEasyHardMiner``).
        allowed_neg_range: the same for negative pairs.
        **kwargs: ``distance`` (default ``LpDistance()``).

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> miner = BatchHardMiner(distance=LpDistance(normalize_embeddings=False))
        >>> emb = torch.tensor([[0.0], [1.0], [4.5], [0.5], [2.0], [5.0]])
        >>> a, p, n = miner(emb, torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> list(zip(a.tolist(), p.tolist(), n.tolist()))
        [(0, 2, 3), (1, 2, 3), (2, 0, 5), (3, 5, 0), (4, 5, 1), (5, 3, 2)]
    """

    def __init__(
        self,
        allowed_pos_range: tuple[float, float] | None = None,
        allowed_neg_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        self.allowed_pos_range = check_allowed_range(name, "allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = check_allowed_range(name, "allowed_neg_range", allowed_neg_range)

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Triplets:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        closer_is_larger = self.distance.higher_is_closer
        _, p, pos_found = pick_per_row(mat, positive, not closer_is_larger, self.allowed_pos_range)
        _, n, neg_found = pick_per_row(mat, negative, closer_is_larger, self.allowed_neg_range)
        keep = pos_found & neg_found
        return Triplets(torch.nonzero(keep).flatten(), p[keep], n[keep])
