"""Barlow Twins: redundancy reduction between two views (Zbontar et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_range
from ..reducers import BaseReducer, SumReducer
from ..types import TermKind, Terms
from .base import BaseTwoViewLoss

__all__ = ["BarlowTwinsLoss"]


class BarlowTwinsLoss(BaseTwoViewLoss):
    """Barlow Twins (Zbontar, Jing, Misra, LeCun and Deny, 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", ICML, arXiv:2103.03230).

    A self-supervised loss on two views of the same samples: ``embeddings`` (``Z^A``) and ``ref_emb``
    (``Z^B``), row ``b`` of one pairing with row ``b`` of the other. No labels. Each view is standardised per
    dimension over the batch, ``z_hat = (z - mean) / sqrt(var + eps)`` (biased variance, as a
    ``BatchNorm1d(affine=False)`` in training mode, which is what the authors' code applies), and the
    cross-correlation matrix of the two views is ``C = z_hat_A^T z_hat_B / n`` (``d x d``). The loss is::

        L = scale_loss * ( sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2 )

    The first sum (invariance) makes the two views agree dimension by dimension; the second (redundancy
    reduction) decorrelates the dimensions. With ``eps = 0``, ``C`` is exactly the paper's Eq. 2.

    The sub-losses, one value per embedding dimension ``i`` (their "anchors" are the dimension indices), are
    ``"invariance_loss"`` (``scale_loss * (1 - C_ii)^2``) and ``"redundancy_reduction_loss"``
    (``scale_loss * lambd * sum_{j != i} C_ij^2``). The default reducer is ``SumReducer()``, so that the
    loss is the paper's sum; a ``MeanReducer()`` divides it by ``d``.

    Args:
        lambd: ``lambda``, the weight of the off-diagonal terms, ``>= 0`` (the paper's 5e-3; TLDR,
            arXiv:2110.09455, uses the same).
        eps: added to the variance before the square root, ``>= 0`` (the default of ``BatchNorm1d``; with 0,
            a constant dimension divides by zero).
        scale_loss: a factor on the whole loss, ``> 0`` (an early version of the authors' code scaled the
            loss by 1/32; 1 leaves the paper's loss).
        **kwargs: ``reducer``, ``embedding_regularizer`` (applied to ``embeddings`` only),
            ``embedding_reg_weight``, ``collect_stats``. No ``distance``: the views are compared
            coordinate-wise.

    Example:
        >>> z = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [4.0, 3.0]])
        >>> # identical views: C_11 = C_22 = 1, C_12 = C_21 = 0.529 (the correlation of the two columns)
        >>> round(BarlowTwinsLoss(eps=0.0)(z, ref_emb=z).item(), 6)
        0.0028
    """

    batch_rule: ClassVar[str] = "each dimension is standardised over the batch"
    default_reducer: ClassVar[type[BaseReducer]] = SumReducer

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5, scale_loss: float = 1.0, **kwargs: Any) -> None:
        name = type(self).__name__
        super().__init__(**kwargs)
        check_range(name, "lambd", lambd, low=0)
        check_range(name, "eps", eps, low=0)
        check_range(name, "scale_loss", scale_loss, low=0, low_inclusive=False)
        self.lambd = lambd
        self.eps = eps
        self.scale_loss = scale_loss

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        n, d = embeddings.shape
        c = self.cross_correlation(embeddings, ref_emb)
        diagonal = torch.diagonal(c)
        off_diagonal = c.pow(2).masked_fill(torch.eye(d, dtype=torch.bool, device=c.device), 0).sum(dim=1)
        dims = torch.arange(d, device=embeddings.device)
        return {
            "invariance_loss": Terms((1 - diagonal).pow(2) * self.scale_loss, dims, TermKind.ELEMENT),
            "redundancy_reduction_loss": Terms(
                off_diagonal * (self.lambd * self.scale_loss), dims.clone(), TermKind.ELEMENT
            ),
        }

    def cross_correlation(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """The ``(d, d)`` cross-correlation matrix ``C`` of two ``(n, d)`` views, each standardised per dimension."""
        return self._standardise(z_a).T @ self._standardise(z_b) / z_a.shape[0]

    def _standardise(self, z: Tensor) -> Tensor:
        var, mean = torch.var_mean(z, dim=0, correction=0)
        return (z - mean) / torch.sqrt(var + self.eps)
