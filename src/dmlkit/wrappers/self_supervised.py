"""Self-supervised use of a metric loss: two views of the same samples, labels made up from their positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import Described, check_embeddings, check_type, message
from ..losses.base import BaseMetricLossFunction

__all__ = ["SelfSupervisedLoss"]

_NAME = "SelfSupervisedLoss"


class SelfSupervisedLoss(nn.Module):
    """A metric loss applied to two views of each sample, as in contrastive self-supervised learning
    (Chen, Kornblith, Norouzi and Hinton, 2020, SimCLR, arXiv:2002.05709).

    ``embeddings[i]`` and ``ref_emb[i]`` are two augmentations of sample ``i``: they form a positive pair,
    and views of different samples are negatives. The labels are the sample positions ``0 .. N-1``.

    * ``symmetric=True``: both views are one batch of ``2N`` embeddings with labels ``[0..N-1, 0..N-1]``,
      the batch being its own reference set, so each view is an anchor and the views of other samples in
      both sets are its negatives (SimCLR's setting with ``NTXentLoss``).
    * ``symmetric=False``: ``embeddings`` are the anchors and ``ref_emb`` the reference set, so the loss is
      computed in that one direction only.

    Args:
        loss: the metric loss to apply; with ``symmetric=False`` it must accept a reference set
            (``loss.supports_ref_emb``).
        symmetric: whether both views act as anchors (see above).

    Example:
        >>> from dmlkit.losses import TripletMarginLoss
        >>> view1 = torch.eye(4)
        >>> view2 = 2 * torch.eye(4)  # the same directions: after normalisation the views coincide
        >>> SelfSupervisedLoss(TripletMarginLoss(margin=0.1))(view1, view2).item()
        0.0
    """

    def __init__(self, loss: BaseMetricLossFunction, symmetric: bool = True) -> None:
        super().__init__()
        if not isinstance(loss, BaseMetricLossFunction):
            raise TypeError(
                message(_NAME, "loss", "a dmlkit metric loss (e.g. NTXentLoss())", Described(type(loss).__name__))
            )
        check_type(_NAME, "symmetric", symmetric, bool, "a bool")
        if not symmetric and not loss.supports_ref_emb:
            raise ValueError(
                message(
                    _NAME,
                    "loss",
                    "a loss that accepts a reference set (`supports_ref_emb` is True) when `symmetric` is False",
                    Described(type(loss).__name__),
                )
            )
        self.loss = loss
        self.symmetric = symmetric

    def forward(self, embeddings: Tensor, ref_emb: Tensor) -> Tensor:
        """The loss of the pairs ``(embeddings[i], ref_emb[i])`` against the other samples' views.

        Args:
            embeddings: ``(N, D)`` first view of each sample.
            ref_emb: ``(N, D)`` second view, row ``i`` of the same sample as ``embeddings[i]``.
        """
        check_embeddings(_NAME, embeddings)
        check_embeddings(_NAME, ref_emb, "ref_emb")
        if ref_emb.shape != embeddings.shape:
            raise ValueError(
                message(
                    _NAME,
                    "ref_emb",
                    f"of the shape of `embeddings` {tuple(embeddings.shape)}, one view per sample",
                    Described(f"shape {tuple(ref_emb.shape)}"),
                )
            )
        labels = torch.arange(embeddings.shape[0], device=embeddings.device)
        if self.symmetric:
            return self.loss(torch.cat([embeddings, ref_emb]), torch.cat([labels, labels]))
        # A distinct labels tensor marks `ref_emb` as a separate reference set (no pair is a self-pair).
        return self.loss(embeddings, labels, ref_emb=ref_emb, ref_labels=labels.clone())

    def extra_repr(self) -> str:
        return f"symmetric={self.symmetric}"
