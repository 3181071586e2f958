"""ArcFace (additive angular margin) loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .margin_softmax import (
    additive_angular_margin,
    column_logits,
    cosine_margin_terms,
    new_class_columns,
)

__all__ = ["ArcFaceLoss", "check_degrees"]


def check_degrees(owner: str, margin: float) -> float:
    """An angular margin in degrees, ``0 <= margin < 180``; returns it in radians."""
    check_range(owner, "margin", margin, low=0, high=180, high_inclusive=False)
    return math.radians(margin)


class ArcFaceLoss(BaseClassWeightLoss):
    """ArcFace loss (Deng et al., 2019, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    arXiv:1801.07698).

    A softmax cross-entropy over ``scale * cos(theta_ij)`` (unit embeddings, unit class weights) where the
    target logit is ``scale * cos(theta + m)``. Past ``theta = pi - m``, where ``cos(theta + m)`` would rise
    again, the target logit is ``scale * (cos(theta) - m sin(m))`` (the reference implementation's
    fallback). One term per sample; a miner's ``indices_tuple`` weights each sample by how often it was mined.

    As in pytorch-metric-learning the margin is given in **degrees** (28.6 degrees is the paper's 0.5 rad), and
    ``W`` has shape ``(embedding_size, num_classes)``. Unlike pytorch-metric-learning, ``self.margin`` keeps
    the value given (degrees) and the gradient is finite at angles 0 and pi (``cos(theta + m)`` is expanded
    instead of going through ``acos``). Under autocast the computation runs in float32.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the additive angular margin in degrees, ``0 <= margin < 180``.
        scale: the logit scale ``s``, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (must be a ``CosineSimilarity``, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = ArcFaceLoss(num_classes=3, embedding_size=4)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        0
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64, **kwargs: Any
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        self._radians = check_degrees(name, margin)
        self.W = new_class_columns(self, scale)
        self.margin = margin
        self.scale = scale

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``scale * cos(theta_ij)``: the logits without margin."""
        return column_logits(self.distance, embeddings, self.W, self.scale)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by the base
        return cosine_margin_terms(self.distance, embeddings, self.W, labels, self.scale, indices_tuple, self._margined)

    def _margined(self, cosine: Tensor, embeddings: Tensor) -> Tensor:
        return additive_angular_margin(cosine, self._radians)
