from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import Described, check_range, message
from ..types import TermKind, Terms
from .base import BaseTwoViewLoss

__all__ = ["VICRegLoss"]


class VICRegLoss(BaseTwoViewLoss):
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

    batch_rule: ClassVar[str] = "variances and covariances are over the batch"

    def __init__(
        self,
        invariance_lambda: float = 25,
        variance_mu: float = 25,
        covariance_v: float = 1,
        eps: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        super().__init__(**kwargs)  # refuses a distance first
        if kwargs.get("embedding_regularizer") is not None:
            got = Described(type(kwargs["embedding_regularizer"]).__name__)
            raise ValueError(
                message(name, "embedding_regularizer", "None: the variance and covariance terms regularise", got)
            )
        check_range(name, "invariance_lambda", invariance_lambda, low=0)
        check_range(name, "variance_mu", variance_mu, low=0)
        check_range(name, "covariance_v", covariance_v, low=0)
        check_range(name, "eps", eps, low=0)
        self.invariance_lambda = invariance_lambda
        self.variance_mu = variance_mu
        self.covariance_v = covariance_v
        self.eps = eps

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
        weights = (self.invariance_lambda, self.variance_mu, self.covariance_v, self.eps)
        invariance, variance1, variance2, covariance = _VICRegTerms.apply(embeddings, ref_emb, weights)
        return {
            "invariance_loss": Terms(invariance, rows, TermKind.ELEMENT),
            "variance_loss1": Terms(variance1, dims, TermKind.ELEMENT),
            "variance_loss2": Terms(variance2, dims, TermKind.ELEMENT),
            "covariance_loss": Terms.reduced(covariance),
        }


#: rows per chunk when centring a view for its covariance (no full centred copy is kept)
_CHUNK_ROWS = 1024


def _covariance(z: Tensor, mean: Tensor) -> Tensor:
    """``Cov(z) = (z - mean)^T (z - mean) / (n - 1)``, centred chunk by chunk of rows."""
    cov = z.new_zeros(z.shape[1], z.shape[1])
    for start in range(0, z.shape[0], _CHUNK_ROWS):
        part = z[start : start + _CHUNK_ROWS] - mean
        cov.addmm_(part.T, part)
    return cov.div_(z.shape[0] - 1)


class _VICRegTerms(torch.autograd.Function):
    """The four VICReg terms of two views, ``(invariance per sample, variance per dimension of each view,
    covariance)``, each already weighted, with the gradient written out; besides the two views only ``(d, d)``
    statistics are kept, and the backward's only ``(n, d)`` buffers are the two gradients.

    With ``c = z - mean`` (whose column sums vanish, so the centring adds no term) and ``cov = c^T c / (n - 1)``:
    ``d inv_i / d z1_i = 2 lambda / d (z1_i - z2_i)``; ``d v_j / d cov_jj = -mu / (4 sqrt(cov_jj + eps))`` where
    ``sqrt(cov_jj + eps) < 1`` (0 elsewhere); ``d c / d cov_ab = 2 nu cov_ab / d`` off the diagonal; and a
    gradient ``G`` on ``cov`` reaches ``z`` as ``2 / (n - 1) c G``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, z1: Tensor, z2: Tensor, weights: tuple[float, float, float, float]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lam, mu, nu, eps = weights
        d = z1.shape[1]
        invariance = (z1 - z2).square_().mean(dim=1).mul_(lam)
        means, covs, variances, slopes = [], [], [], []
        covariance = z1.new_zeros(())
        for z in (z1, z2):
            mean = z.mean(dim=0)
            cov = _covariance(z, mean)
            std = torch.sqrt(torch.diagonal(cov) + eps)
            variances.append(torch.relu(1 - std).mul_(mu / 2))
            slopes.append(torch.where(std < 1, -mu / 4 / std, torch.zeros_like(std)))
            covariance = covariance + (cov.square().sum() - torch.diagonal(cov).square().sum()) / d
            means.append(mean)
            covs.append(cov)
        ctx.save_for_backward(z1, z2, *means, *covs, *slopes)
        ctx.weights = weights
        return invariance, variances[0], variances[1], covariance * nu

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_inv: Tensor, g_var1: Tensor, g_var2: Tensor, g_cov: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None]:
        z1, z2, mean1, mean2, cov1, cov2, slope1, slope2 = ctx.saved_tensors
        lam, _, nu, _ = ctx.weights
        n, d = z1.shape
        grad1 = torch.sub(z1, z2).mul_(g_inv.unsqueeze(1) * (2 * lam / d))
        grad2 = grad1.neg()
        views = ((z1, grad1, mean1, cov1, slope1, g_var1), (z2, grad2, mean2, cov2, slope2, g_var2))
        for z, grad, mean, cov, slope, g_var in views:
            # the gradient on the covariance matrix: off-diagonal from c, diagonal from the variance term
            on_cov = cov * (g_cov * 2 * nu / d)
            on_cov.diagonal().copy_(g_var * slope)
            on_cov.mul_(2 / (n - 1))
            # (z - mean) @ G, added in place: z @ G, then the rank-one correction of the mean
            grad.addmm_(z, on_cov).sub_(mean @ on_cov)
        return (grad1 if ctx.needs_input_grad[0] else None), (grad2 if ctx.needs_input_grad[1] else None), None
