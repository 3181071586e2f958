"""Proxy-Anchor: every class proxy is an anchor that pulls its samples in and pushes the others away."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_range
from ..distances import CosineSimilarity
from ..reducers import DivisorReducer
from ..types import TermKind, Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision, miner_weights, row_logsumexp, segment_logsumexp

__all__ = ["ProxyAnchorLoss"]


class ProxyAnchorLoss(BaseClassWeightLoss):
    """Proxy-Anchor loss (Kim, Kim, Cho and Kwak, 2020, "Proxy Anchor Loss for Deep Metric Learning", CVPR,
    arXiv:2003.13911).

    With ``s(x, p)`` the cosine similarity of embedding ``x`` and proxy ``p``, ``X_p+`` the batch samples of
    proxy ``p``'s class and ``X_p-`` the others::

        pos_loss = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
        neg_loss = 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    where ``P+`` are the proxies with at least one sample in the batch and ``P`` all proxies. The two groups
    are returned as ``"pos_loss"`` and ``"neg_loss"``: one value per proxy (``anchors`` = proxy index) with
    those divisors, summed and divided by the default ``DivisorReducer``. A non-cosine ``distance`` enters
    through ``distance.margin`` (for a distance ``d`` the exponents are ``alpha (d - margin)`` and
    ``alpha (-margin - d)``), as in pytorch-metric-learning.

    Pairs or triplets from a miner give each sample a weight ``w`` (how often it appears in them, divided by
    the largest count; 0 if never) that is added to its exponents as ``w - 1``: mined samples count fully,
    the others are damped by ``exp(-1)`` rather than removed. This is pytorch-metric-learning's rule.

    Args:
        num_classes: the number of classes (proxies), ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the margin ``delta``, ``>= 0``.
        alpha: the scale, ``> 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default Kaiming-normal
            with ``mode="fan_out"``, as in the paper's code), ``distance`` (default ``CosineSimilarity()``),
            ``reducer`` (default ``DivisorReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Attributes:
        proxies: ``(num_classes, embedding_size)`` learned proxies, float32.

    Example:
        >>> loss_fn = ProxyAnchorLoss(num_classes=2, embedding_size=2, weight_init_func=torch.nn.init.eye_)
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(loss_fn(emb, torch.tensor([0, 1])).item(), 4)
        3.24
    """

    default_distance = CosineSimilarity
    default_reducer = DivisorReducer
    default_weight_init = staticmethod(functools.partial(nn.init.kaiming_normal_, mode="fan_out"))

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32, **kwargs: Any
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_range(name, "alpha", alpha, low=0, low_inclusive=False)
        self.margin = margin
        self.alpha = alpha
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
        num_classes, dist = self.num_classes, self.distance
        with full_precision(embeddings) as x:
            sim = dist(x, self.proxies.to(x.dtype))
            weights = miner_weights(indices_tuple, x.shape[0], sim.dtype, sim.device, anchors_only=False)
            # Positives: each sample is a positive of its own proxy only, so that term needs one value per sample.
            own = sim.gather(1, labels.unsqueeze(1)).squeeze(1)
            pos_exp = self.alpha * dist.margin(own, self.margin)  # type: ignore[arg-type]
            neg_exp = self.alpha * dist.margin(-self.margin, sim)  # type: ignore[arg-type]
            if weights is not None:
                pos_exp = pos_exp + (weights - 1)
                neg_exp = neg_exp + (weights - 1).unsqueeze(1)
            pos = segment_logsumexp(pos_exp, labels, num_classes, add_one=True)
            negative = labels.unsqueeze(0) != torch.arange(num_classes, device=labels.device).unsqueeze(1)
            neg = row_logsumexp(neg_exp.t(), negative, add_one=True)
        with_positives = int(torch.count_nonzero(torch.bincount(labels, minlength=num_classes)))
        proxies = torch.arange(num_classes, device=pos.device)
        return {
            "pos_loss": Terms(pos, proxies, TermKind.ELEMENT, divisor=with_positives),
            "neg_loss": Terms(neg, proxies, TermKind.ELEMENT, divisor=num_classes),
        }
