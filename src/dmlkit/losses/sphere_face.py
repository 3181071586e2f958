"""SphereFace (angular softmax, A-Softmax) loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision
from .large_margin_softmax import check_angle_multiplier
from .margin_softmax import angle_multiplier_terms, new_class_columns, scaled_product, unit_rows

__all__ = ["SphereFaceLoss"]


class SphereFaceLoss(BaseClassWeightLoss):
    """SphereFace loss (Liu et al., 2017, "SphereFace: Deep Hypersphere Embedding for Face Recognition",
    arXiv:1704.08063).

    The large-margin softmax with unit-norm class weights (A-Softmax): logits ``scale * ||x_i|| cos(theta_ij)``,
    the target's ``cos(theta)`` replaced by ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in
    ``[k pi / m, (k + 1) pi / m]``. The stored ``W`` (shape ``(embedding_size, num_classes)``, as in
    pytorch-metric-learning) keeps any norm; only its direction counts. One term per sample; a miner's
    ``indices_tuple`` weights each sample by how often it was mined. Under autocast the computation runs in
    float32.

    pytorch-metric-learning derives this class from ``LargeMarginSoftmaxLoss``; here both derive from
    :class:`~dmlkit.losses.class_weights.BaseClassWeightLoss` and share functions instead.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the angle multiplier ``m``, a positive integer.
        scale: a factor on every logit, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (must be a ``CosineSimilarity``, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = SphereFaceLoss(num_classes=3, embedding_size=4)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        0
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(self, num_classes: int, embedding_size: int, margin: int = 4, scale: float = 1, **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        self.margin = check_angle_multiplier(name, margin)
        self.W = new_class_columns(self, scale)
        self.scale = scale

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``scale * ||x_i|| cos(theta_ij)``: the logits without margin."""
        with full_precision(embeddings) as emb:
            return scaled_product(emb, unit_rows(self.distance, self.W.t().to(emb.dtype)), self.scale)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by the base
        return angle_multiplier_terms(
            self.distance, embeddings, self.W, labels, self.margin, self.scale, indices_tuple, unit_weights=True
        )
