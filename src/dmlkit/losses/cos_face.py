"""CosFace (large margin cosine) loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .margin_softmax import (
    check_scale,
    cosine_logits,
    full_precision,
    margin_cross_entropy,
    require_cosine,
    scaled_cosines,
)

__all__ = ["CosFaceLoss"]


class CosFaceLoss(BaseClassWeightLoss):
    """CosFace loss, the large margin cosine loss (Wang et al., 2018, "CosFace: Large Margin Cosine Loss for
    Deep Face Recognition", arXiv:1801.09414).

    A softmax cross-entropy over ``scale * cos(theta_ij)`` (unit embeddings, unit class weights) where the
    target logit is ``scale * (cos(theta) - margin)``. One term per sample; a miner's ``indices_tuple``
    weights each sample by how often it was mined. ``W`` has shape ``(embedding_size, num_classes)`` as in
    pytorch-metric-learning. Under autocast the computation runs in float32.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the cosine margin ``m``, ``>= 0``.
        scale: the logit scale ``s``, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (must be a ``CosineSimilarity``, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = CosFaceLoss(num_classes=3, embedding_size=4)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        0
    """

    default_distance = CosineSimilarity

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64, **kwargs: Any
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        require_cosine(name, self.distance)
        check_range(name, "margin", margin, low=0)
        check_scale(name, scale)
        self.margin = margin
        self.scale = scale
        self.W = self.new_weights(embedding_size, num_classes)

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``scale * cos(theta_ij)``: the logits without margin."""
        with full_precision(embeddings) as emb:
            return scaled_cosines(self.distance, emb, self.W.t().to(emb.dtype), self.scale)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by the base
        with full_precision(embeddings) as emb:
            logits, cosine = cosine_logits(self.distance, emb, self.W.t().to(emb.dtype), labels, self.scale)
            target = (cosine - self.margin) * self.scale
            return {"loss": margin_cross_entropy(logits, labels, target, indices_tuple)}
