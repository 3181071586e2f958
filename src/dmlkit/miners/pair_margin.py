"""Pair mining by margin violation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..indices import label_masks
from ..types import Pairs
from .base import BaseMiner

__all__ = ["PairMarginMiner"]


class PairMarginMiner(BaseMiner):
    """Mines the pairs that violate the margins of a contrastive loss (Hadsell, Chopra and LeCun, 2006, CVPR).

    The contrastive loss penalises a positive pair farther apart than ``pos_margin`` and a negative
    pair closer than ``neg_margin``; this miner returns exactly those pairs. For a distance: positive
    pairs with ``d > pos_margin`` and negative pairs with ``d < neg_margin``; for a similarity (higher is
    closer): positive pairs with ``s < pos_margin`` and negative pairs with ``s > neg_margin``. Pairs come
    in row-major (anchor, then reference index) order.

    Args:
        pos_margin: positive pairs beyond it are returned.
        neg_margin: negative pairs within it are returned.
        **kwargs: ``distance`` (default ``LpDistance()``).

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> miner = PairMarginMiner(pos_margin=0.5, neg_margin=1.0, distance=LpDistance(normalize_embeddings=False))
        >>> a1, p, a2, n = miner(torch.tensor([[0.0], [1.0], [0.5], [3.0]]), torch.tensor([0, 0, 1, 1]))
        >>> list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist()))
        ([(0, 1), (1, 0), (2, 3), (3, 2)], [(0, 2), (1, 2), (2, 0), (2, 1)])
    """

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "pos_margin", pos_margin)
        check_range(name, "neg_margin", neg_margin)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Pairs:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        if self.distance.higher_is_closer:
            positive &= mat < self.pos_margin
            negative &= mat > self.neg_margin
        else:
            positive &= mat > self.pos_margin
            negative &= mat < self.neg_margin
        a1, p = torch.nonzero(positive, as_tuple=True)
        a2, n = torch.nonzero(negative, as_tuple=True)
        return Pairs(a1, p, a2, n)
