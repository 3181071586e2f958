"""Triplet mining by the angle at the negative, as in the angular loss."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import BaseDistance, LpDistance
from ..indices import label_masks, triplets_from_selection
from ..types import Triplets
from .base import BaseMiner

__all__ = ["AngularMiner"]

#: how many (positive pair, reference) cells one mining block may hold.
_BLOCK_CELLS = 1 << 22


def check_unit_sphere_euclidean(owner: str, distance: BaseDistance) -> None:
    """The distance must be the Euclidean distance between L2-normalised embeddings."""
    ok = isinstance(distance, LpDistance) and distance.p == 2 and distance.power == 1 and distance.normalize_embeddings
    if not ok:
        raise ValueError(message(owner, "distance", "LpDistance(p=2, power=1, normalize_embeddings=True)", distance))


class AngularMiner(BaseMiner):
    """Mines the triplets whose angle at the negative exceeds ``angle`` (Wang, Zhou, Wen, Liu and Lin, 2017,
    "Deep Metric Learning with Angular Loss", arXiv:1708.01682).

    For a triplet (a, p, n), the angular loss looks at the triangle formed by the negative and the circle
    through ``a`` and ``p`` centred at ``c = (a + p) / 2``; the angle at the negative is
    ``atan(||a - p|| / (2 ||n - c||))``. A large angle means the negative sits close to the positive pair
    relative to the pair's extent, so the triplet is hard. Every triplet (label[a] == label[p] != label[n])
    with an angle strictly above the threshold is returned, in lexicographic (a, p, n) order.

    Embeddings are L2-normalised before the angles are measured, as the angular loss does (the required
    distance normalises). pytorch-metric-learning (2.9.0) requires the same distance but measures the angles
    on the embeddings as given; the two mine the same triplets from unit-norm embeddings. Work is done in
    blocks of positive pairs against the reference set, so memory grows with the output, never with
    ``batch_size ** 3``.

    Args:
        angle: the threshold in degrees, in ``[0, 90]`` (angles at the negative lie in that range).
        **kwargs: ``distance``, which must be ``LpDistance(p=2, power=1, normalize_embeddings=True)`` (the
            default).

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.44], [0.8, 0.6], [-1.0, 0.0]])
        >>> a, p, n = AngularMiner(angle=20)(emb, torch.tensor([0, 0, 1, 1]))
        >>> list(zip(a.tolist(), p.tolist(), n.tolist()))
        [(0, 1, 2), (1, 0, 2), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)]
    """

    def __init__(self, angle: float = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "angle", angle, low=0, high=90)
        check_unit_sphere_euclidean(name, self.distance)
        self.angle = angle

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Triplets:
        query = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_emb)
        # atan(||a - p|| / (2 ||n - c||)) > angle  <=>  ||a - p||^2 > 4 tan^2(angle) ||n - c||^2 for angles below
        # 90 degrees (both sides are >= 0; a == p == n gives 0 > 0, no triplet): no arctangent, no square root.
        if self.angle >= 90:
            empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
            return Triplets(empty, empty.clone(), empty.clone())
        scale = 4 * math.tan(math.radians(self.angle)) ** 2
        positive, negative = label_masks(labels, ref_labels)
        anchors, positives = torch.nonzero(positive, as_tuple=True)
        block = max(1, _BLOCK_CELLS // max(1, ref.shape[0]))
        ref_sq = (ref * ref).sum(1)
        selected: list[Tensor] = []
        for start in range(0, anchors.numel(), block):
            a = anchors[start : start + block]
            p = positives[start : start + block]
            side_sq = (query[a] - ref[p]).pow(2).sum(1, keepdim=True)
            center = (query[a] + ref[p]) / 2
            to_center_sq = torch.addmm(ref_sq.unsqueeze(0), center, ref.T, alpha=-2)
            to_center_sq += (center * center).sum(1, keepdim=True)
            keep = side_sq > to_center_sq.clamp_min_(0).mul_(scale)
            keep &= negative[a]
            selected.append(keep)
        return triplets_from_selection(anchors, positives, selected, block)
