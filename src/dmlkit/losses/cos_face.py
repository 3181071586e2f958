"""CosFace (large margin cosine) loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .margin_softmax import column_logits, cosine_margin_terms, new_class_columns

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
    required_distance = CosineSimilarity

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64, **kwargs: Any
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
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
        return cosine - self.margin
