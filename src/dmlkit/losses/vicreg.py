from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import Described, check_range, message
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import check_two_views

__all__ = ["VICRegLoss"]


class VICRegLoss(BaseMetricLossFunction):
    """Variance-Invariance-Covariance Regularization (Bardes, Ponce and LeCun, 2022, "VICReg", arXiv:2105.04906).

    A self-supervised loss on two views of the same samples: ``embeddings`` (``Z``) and ``ref_emb`` (``Z'``),
    row ``i`` of one pairing with row ``i`` of the other. No labels::

        L = lambda * s(Z, Z') + mu * (v(Z) + v(Z')) + nu * (c(Z) + c(Z'))

    - invariance ``s``: the mean squared difference of paired rows (averaged over the dimensions, as in the
      authors' code; the paper sums them), one value per sample;
    - variance ``v(Z) = mean_j relu(1 - sqrt(Var(Z[:, j]) + eps)) / 2`` (unbiased variance over the batch), one
      value per dimension, which keeps every dimension from collapsing;
    - covariance ``c(Z) = sum_{i != j} Cov(Z)_{ij}^2 / d``, which decorrelates the dimensions.

    The sub-losses are ``"invariance_loss"`` (per sample, already multiplied by ``invariance_lambda``),
    ``"variance_loss1"`` and ``"variance_loss2"`` (per dimension of ``Z`` and ``Z'``, multiplied by
    ``variance_mu``; their "anchors" are the dimension indices) and ``"covariance_loss"`` (a scalar, multiplied
    by ``covariance_v``), reduced by ``reducer`` (default ``MeanReducer()``) as in pytorch-metric-learning.

    Args:
        invariance_lambda: ``lambda``, weight of the invariance term, ``>= 0``.
        variance_mu: ``mu``, weight of the variance terms, ``>= 0``.
        covariance_v: ``nu``, weight of the covariance terms, ``>= 0``.
        eps: added to the variance before the square root, ``>= 0`` (with 0, a constant dimension has an
            infinite gradient).
        **kwargs: ``reducer``, ``collect_stats``. No ``distance`` (the views are compared coordinate-wise) and
            no ``embedding_regularizer``.

    Example:
        >>> z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> round(VICRegLoss()(z1, ref_emb=z1 * 0.9).item(), 4)
        5.7316
    """

    requires_labels: ClassVar[bool] = False

    def __init__(
        self,
        invariance_lambda: float = 25,
        variance_mu: float = 25,
        covariance_v: float = 1,
        eps: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if kwargs.get("distance") is not None:
            got = Described(type(kwargs["distance"]).__name__)
            raise ValueError(message(name, "distance", "None: the two views are compared coordinate-wise", got))
        if kwargs.get("embedding_regularizer") is not None:
            got = Described(type(kwargs["embedding_regularizer"]).__name__)
            raise ValueError(
                message(name, "embedding_regularizer", "None: the variance and covariance terms regularise", got)
            )
        super().__init__(**kwargs)
        check_range(name, "invariance_lambda", invariance_lambda, low=0)
        check_range(name, "variance_mu", variance_mu, low=0)
        check_range(name, "covariance_v", covariance_v, low=0)
        check_range(name, "eps", eps, low=0)
        self.invariance_lambda = invariance_lambda
        self.variance_mu = variance_mu
        self.covariance_v = covariance_v
        self.eps = eps

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The loss of the two views ``embeddings`` and ``ref_emb``; ``labels``, ``indices_tuple`` and
        ``ref_labels`` must be left out."""
        check_two_views(
            type(self).__name__,
            embeddings,
            labels,
            indices_tuple,
            ref_emb,
            ref_labels,
            "variances and covariances are over the batch",
        )
        return super().forward(embeddings, ref_emb=ref_emb)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        n, d = embeddings.shape
        rows = torch.arange(n, device=embeddings.device)
        dims = torch.arange(d, device=embeddings.device)
        invariance = F.mse_loss(embeddings, ref_emb, reduction="none").mean(dim=1) * self.invariance_lambda
        variance1, covariance1 = self._view_penalties(embeddings)
        variance2, covariance2 = self._view_penalties(ref_emb)
        return {
            "invariance_loss": Terms(invariance, rows, TermKind.ELEMENT),
            "variance_loss1": Terms(variance1 * self.variance_mu, dims, TermKind.ELEMENT),
            "variance_loss2": Terms(variance2 * self.variance_mu, dims, TermKind.ELEMENT),
            "covariance_loss": Terms.reduced((covariance1 + covariance2) * self.covariance_v),
        }

    def _view_penalties(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """For one view: ``relu(1 - std_j) / 2`` per dimension ``j`` (the halves of the two views average them),
        and the sum of the squared off-diagonal covariances divided by the dimension.

        The variances are the covariance matrix's diagonal, so one matrix product gives both terms.
        """
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = (centred.T @ centred) / (n - 1)
        var = torch.diagonal(cov)
        variance = F.relu(1 - torch.sqrt(var + self.eps)) / 2
        covariance = (cov.pow(2).sum() - var.pow(2).sum()) / d
        return variance, covariance
