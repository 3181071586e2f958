"""Large-margin softmax (L-Softmax) loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .._validation import is_real_number, message
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision
from .margin_softmax import angle_multiplier_terms, new_class_columns, scaled_product

__all__ = ["LargeMarginSoftmaxLoss", "check_angle_multiplier"]


def check_angle_multiplier(owner: str, margin: Any) -> int:
    """The integer ``m >= 1`` of ``cos(m theta)``; ``4`` and ``4.0`` are accepted, ``2.5`` is not."""
    integral = is_real_number(margin, integer=True) or (is_real_number(margin) and float(margin).is_integer())
    if not integral or margin < 1:
        raise ValueError(message(owner, "margin", "a positive integer (the angle multiplier m)", margin))
    return int(margin)


class LargeMarginSoftmaxLoss(BaseClassWeightLoss):
    """Large-margin softmax loss (Liu et al., 2016, "Large-Margin Softmax Loss for Convolutional Neural
    Networks", arXiv:1612.02295).

    A softmax cross-entropy over the logits ``scale * ||W_j|| ||x_i|| cos(theta_ij)``, where the target class's
    ``cos(theta)`` is replaced by ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in
    ``[k pi / m, (k + 1) pi / m]``: the angle to the own class is effectively multiplied by ``m``.
    ``cos(m theta)`` is a Chebyshev polynomial of ``cos(theta)`` (the paper's eq. 7). Each sample is one
    term (reduction ``"element"``); a miner's ``indices_tuple`` weights each sample by how often it was mined.

    The weights ``W`` have shape ``(embedding_size, num_classes)`` as in pytorch-metric-learning, so its
    ``state_dict`` loads unchanged. Under autocast the computation runs in float32.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the angle multiplier ``m``, a positive integer (``1`` is the plain softmax).
        scale: a factor on every logit, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (must be a ``CosineSimilarity``, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = LargeMarginSoftmaxLoss(num_classes=3, embedding_size=4, margin=2)
        >>> loss_fn.W.shape
        torch.Size([4, 3])
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
        """``scale * ||W_j|| ||x_i|| cos(theta_ij)``, i.e. ``scale * x_i . W_j``: the logits without margin."""
        with full_precision(embeddings) as emb:
            return scaled_product(emb, self.W.t().to(emb.dtype), self.scale)

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
            self.distance, embeddings, self.W, labels, self.margin, self.scale, indices_tuple, unit_weights=False
        )
