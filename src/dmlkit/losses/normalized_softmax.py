"""Normalized softmax loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..distances import DotProductSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision
from .margin_softmax import margin_cross_entropy, new_class_columns, scaled_product

__all__ = ["NormalizedSoftmaxLoss"]


class NormalizedSoftmaxLoss(BaseClassWeightLoss):
    """Normalized softmax loss (Zhai & Wu, 2018, "Classification is a Strong Baseline for Deep Metric
    Learning", arXiv:1811.12649).

    A softmax cross-entropy over ``s(x_i, w_j) / temperature`` where ``w_j`` are the class weights normalised
    to unit length and ``s`` is the similarity ``distance`` gives (a distance enters with its sign flipped,
    ``-d(x_i, w_j) / temperature``). With the default ``DotProductSimilarity`` (normalised embeddings) these are
    cosine logits at temperature ``0.05``. One term per sample; a miner's ``indices_tuple`` weights each sample
    by how often it was mined. ``W`` has shape ``(embedding_size, num_classes)`` as in
    pytorch-metric-learning. Under autocast the computation runs in float32.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        temperature: divides the logits, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (any; default ``DotProductSimilarity()``), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = NormalizedSoftmaxLoss(num_classes=3, embedding_size=4, temperature=0.1)
        >>> loss_fn(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        0
    """

    default_distance = DotProductSimilarity

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05, **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        self.W = new_class_columns(self, temperature, "temperature")
        self.temperature = temperature

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``s(x_i, w_j / ||w_j||) / temperature`` (``-d(...)`` for a distance)."""
        with full_precision(embeddings) as emb:
            weights = self.distance.normalize(self.W.t().to(emb.dtype))
            sign = 1.0 if self.distance.is_inverted else -1.0
            if type(self.distance) is DotProductSimilarity and self.distance.power == 1:
                # a plain inner product: the scale rides on the smaller operand, the unit weights stay as they are
                return scaled_product(self.distance.maybe_normalize(emb), weights, sign / self.temperature)
            return self.distance(emb, weights) * (sign / self.temperature)

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
            return {"loss": margin_cross_entropy(self.get_logits(emb), labels, None, indices_tuple)}
