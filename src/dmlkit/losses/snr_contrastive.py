from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .._validation import check_range, check_type
from ..distances import SNRDistance
from ..reducers import AvgNonZeroReducer
from ..types import Terms
from .base import BaseMetricLossFunction
from .contrastive import contrastive_terms

__all__ = ["SignalToNoiseRatioContrastiveLoss"]


class SignalToNoiseRatioContrastiveLoss(BaseMetricLossFunction):
    """Contrastive loss on the signal-to-noise ratio distance (Yuan et al., 2019, "Signal-to-Noise Ratio: A
    Robust Distance Metric for Deep Metric Learning", CVPR, arXiv:1904.02616).

    With ``d(a, x) = Var(x - a) / Var(a)`` (:class:`~dmlkit.distances.SNRDistance`)::

        pos_loss(a, p) = relu(d(a, p) - pos_margin)
        neg_loss(a, n) = relu(neg_margin - d(a, n))

    returned as the sub-losses ``"pos_loss"`` and ``"neg_loss"``, each reduced by the average of its
    non-zero values. The paper's loss also adds ``lambda * mean_i |sum_j x_ij|``, which keeps the
    embeddings zero-mean as the SNR distance assumes; as in pytorch-metric-learning it is not built in: pass
    ``embedding_regularizer=ZeroMeanRegularizer()`` and ``embedding_reg_weight=lambda``.

    Args:
        pos_margin: positive pairs with a ratio below this cost nothing (the paper uses 0).
        neg_margin: negative pairs with a ratio above this cost nothing.
        **kwargs: ``distance`` (must be an :class:`~dmlkit.distances.SNRDistance`, the default), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> from dmlkit.regularizers import ZeroMeanRegularizer
        >>> loss_fn = SignalToNoiseRatioContrastiveLoss(embedding_regularizer=ZeroMeanRegularizer(),
        ...                                             embedding_reg_weight=0.001)
        >>> emb = torch.tensor([[1.0, -1.0, 0.0], [1.0, -0.9, -0.1], [0.0, 1.0, -1.0], [-0.1, 1.0, -0.9]])
        >>> round(loss_fn(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0083
    """

    default_distance = SNRDistance
    default_reducer = AvgNonZeroReducer

    def __init__(self, pos_margin: float = 0, neg_margin: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_type(name, "distance", self.distance, SNRDistance, "an SNRDistance (the loss is defined on it)")
        check_range(name, "pos_margin", pos_margin)
        check_range(name, "neg_margin", neg_margin)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        return contrastive_terms(
            self.distance, mat, labels, indices_tuple, ref_labels, self.pos_margin, self.neg_margin
        )
