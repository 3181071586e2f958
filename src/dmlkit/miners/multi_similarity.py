"""Multi-similarity pair mining."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import BaseDistance, CosineSimilarity
from ..indices import label_masks, order_within_rows
from ..types import Pairs
from .base import BaseMiner

__all__ = ["MultiSimilarityMiner"]


class MultiSimilarityMiner(BaseMiner):
    """Mines informative pairs by comparing each pair with the anchor's hardest pair of the other kind
    (Wang, Han, Huang, Dong and Scott, 2019, "Multi-Similarity Loss with General Pair Weighting for Deep
    Metric Learning", arXiv:1904.06627, Sec. 4.1).

    With a similarity ``S`` (the default, cosine), for anchor ``i``:

    * a negative pair ``(i, j)`` is kept when ``S_ij + epsilon > min_{y_k = y_i} S_ik`` (it is more similar
      than the least similar positive, up to the margin);
    * a positive pair ``(i, j)`` is kept when ``S_ij - epsilon < max_{y_k != y_i} S_ik`` (it is less
      similar than the most similar negative, up to the margin).

    With a distance the comparisons mirror: a negative is kept when ``d - epsilon`` is below the farthest
    positive, a positive when ``d + epsilon`` exceeds the closest negative. If the batch has no positive
    pair or no negative pair at all, nothing is returned. Positive pairs come by anchor and, within an anchor,
    by increasing value of the distance or similarity (equal values by index), in pytorch-metric-learning's
    order: :class:`~dmlkit.losses.NPairsLoss` takes the first positive pair of each class, so the order sets
    its value. Negative pairs, which no loss reads in order and which can number millions, come in row-major
    order (pytorch-metric-learning also sorts them by value within an anchor).

    Args:
        epsilon: the margin ``epsilon >= 0``.
        **kwargs: ``distance`` (default ``CosineSimilarity()``).

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
        >>> a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(emb, torch.tensor([0, 0, 1, 1]))
        >>> list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist()))
        ([(1, 0), (2, 3)], [(1, 2), (2, 1)])
    """

    def __init__(self, epsilon: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "epsilon", epsilon, low=0)
        self.epsilon = epsilon

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Pairs:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        if not bool(positive.any()) or not bool(negative.any()):
            empty = torch.empty(0, dtype=torch.long, device=mat.device)
            return Pairs(empty, empty.clone(), empty.clone(), empty.clone())
        eps = self.epsilon
        if self.distance.higher_is_closer:
            # per row: the most similar negative and the least similar positive (+-inf where there is none)
            hardest_neg = mat.masked_fill(~negative, -math.inf).amax(dim=1, keepdim=True)
            easiest_pos = mat.masked_fill(~positive, math.inf).amin(dim=1, keepdim=True)
            positive &= mat - eps < hardest_neg
            negative &= mat + eps > easiest_pos
        else:
            hardest_neg = mat.masked_fill(~negative, math.inf).amin(dim=1, keepdim=True)
            easiest_pos = mat.masked_fill(~positive, -math.inf).amax(dim=1, keepdim=True)
            positive &= mat + eps > hardest_neg
            negative &= mat - eps < easiest_pos
        a1, p = torch.nonzero(positive, as_tuple=True)
        a2, n = torch.nonzero(negative, as_tuple=True)
        pos_order = order_within_rows(a1, mat[a1, p])
        return Pairs(a1[pos_order], p[pos_order], a2, n)
