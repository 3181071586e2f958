"""Proxy-NCA: neighbourhood components analysis between embeddings and one learned proxy per class."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range
from ..distances import LpDistance
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision, sample_terms

__all__ = ["ProxyNCALoss"]


class ProxyNCALoss(BaseClassWeightLoss):
    """Proxy-NCA loss (Movshovitz-Attias, Toshev, Leung, Ioffe and Singh, 2017, "No Fuss Distance Metric
    Learning using Proxies", ICCV, arXiv:1703.07464).

    Every class has a learned proxy ``p_c`` (a row of ``proxies``). Embedding ``x_i`` with label ``y_i``
    picks proxy ``c`` with probability ``softmax_c(-softmax_scale * d(x_i, p_c))``, where ``d`` is the
    squared Euclidean distance of the L2-normalised vectors by default (a similarity ``s`` enters as
    ``+softmax_scale * s``); its loss is ``-log`` of the probability of its own proxy::

        loss_i = logsumexp_c(-scale * d(x_i, p_c)) + scale * d(x_i, p_{y_i})

    This is NCA (see :class:`~dmlkit.losses.NCALoss`) with the proxies as the reference set and class
    ``c`` as proxy ``c``'s label, which is how pytorch-metric-learning defines it. The paper's equation
    leaves the positive proxy out of the denominator (a sum over the negative proxies only); like
    pytorch-metric-learning and the common implementations, the full softmax is used here, which keeps
    the loss bounded below by 0.

    Pairs or triplets from a miner weight sample ``i`` by how often it is an anchor in them, divided by
    the largest such count (0 for samples never mined), as pytorch-metric-learning does. Unlike
    pytorch-metric-learning, a sample whose probability underflows to 0 in floating point (the hardest
    samples at large scales) keeps its loss: it is computed in log space rather than dropped.

    Args:
        num_classes: the number of classes (proxies), ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        softmax_scale: the inverse temperature ``scale``, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``nn.init.normal_``), ``distance`` (default ``LpDistance(power=2)``), ``reducer`` (default
            ``MeanReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Attributes:
        proxies: ``(num_classes, embedding_size)`` learned proxies, float32.

    Example:
        >>> loss_fn = ProxyNCALoss(num_classes=3, embedding_size=2, weight_init_func=torch.nn.init.eye_)
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
        >>> round(loss_fn(emb, torch.tensor([0, 1, 0])).item(), 4)
        0.4153
    """

    default_distance = functools.partial(LpDistance, power=2)

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1, **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        check_range(type(self).__name__, "softmax_scale", softmax_scale, low=0, low_inclusive=False)
        self.softmax_scale = softmax_scale
        self.proxies = self.new_weights(num_classes, embedding_size)

    def class_weights(self) -> Tensor:
        return self.proxies

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by BaseClassWeightLoss.forward
        with full_precision(embeddings) as x:
            mat = self.distance(x, self.proxies.to(x.dtype))
            scale = self.softmax_scale if self.distance.higher_is_closer else -self.softmax_scale
            values = F.cross_entropy(mat * scale, labels, reduction="none")
        # the proxies are the reference set, so only anchor positions index the batch (as in NCA with ref_emb)
        return {"loss": sample_terms(values, indices_tuple, anchors_only=True)}
