from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import Terms
from .base import BaseMetricLossFunction
from .functional import pair_values
from .ntxent import positive_pair_terms

__all__ = ["TupletMarginLoss"]


def _cos_minus_angle(cos: Tensor, angle: float) -> Tensor:
    """``cos(arccos(c) - angle)`` as ``c cos(angle) + sqrt(1 - c^2) sin(angle)``, for ``c`` clamped to [-1, 1].

    The derivative of ``sqrt(1 - c^2)`` is infinite at ``c = +-1`` (identical or opposite embeddings);
    there, and within float resolution of it, the square root is treated as a constant so gradients stay
    finite. Values are exact everywhere.
    """
    cos = cos.clamp(-1.0, 1.0)
    sin_sq = 1.0 - cos * cos
    smooth = sin_sq > torch.finfo(cos.dtype).eps
    sin = torch.where(smooth, torch.where(smooth, sin_sq, 1.0).sqrt(), sin_sq.clamp(min=0).sqrt().detach())
    return cos * math.cos(angle) + sin * math.sin(angle)


class TupletMarginLoss(BaseMetricLossFunction):
    """Tuplet margin loss (Yu and Tao, 2019, "Deep Metric Learning with Tuplet Margin Loss", ICCV,
    arXiv:1910.04793).

    Every positive pair ``(a, p)`` at angle ``theta_ap`` is scored against the negatives ``N_a`` of ``a``
    (from the labels, or the negative pairs of a miner that share the anchor)::

        log(1 + sum_{n in N_a} exp(scale * (cos(theta_an) - cos(theta_ap - margin))))

    The margin (the paper's ``beta``, given in degrees) makes the positive count as if it were ``margin``
    degrees closer, so a negative must stay at least that much farther than the positive to stop contributing. A
    pair whose anchor has no negative contributes 0. The sum over negatives is one log-sum-exp per anchor
    (memory: one ``(batch, reference)`` matrix, never one row of negatives per positive pair), so large
    ``scale`` stays finite. The paper's intra-pair variance term is the separate ``IntraPairVarianceLoss``.

    Args:
        margin: the angular margin in degrees, ``>= 0``. Stored in radians in ``self.margin``, as in
            pytorch-metric-learning.
        scale: the logit scale ``s``, ``> 0``.
        **kwargs: ``distance`` (must be a ``CosineSimilarity``, the default), ``reducer`` (default
            ``MeanReducer()``, over the positive pairs), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(TupletMarginLoss(scale=8)(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0617
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(self, margin: float = 5.73, scale: float = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_range(name, "scale", scale, low=0, low_inclusive=False)
        self.margin = math.radians(margin)
        self.scale = scale

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)

        def pair_loss(a: Tensor, p: Tensor, negative_lse: Tensor) -> Tensor:
            positive = _cos_minus_angle(pair_values(mat, a, p), self.margin) * self.scale
            return torch.logaddexp(negative_lse - positive, mat.new_zeros(()))

        return {"loss": positive_pair_terms(mat * self.scale, labels, indices_tuple, ref_labels, pair_loss)}
