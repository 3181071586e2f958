"""P2SGrad: squared error between cosine logits and one-hot targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import message
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss, resolve_class_sizes
from .functional import full_precision, sample_terms
from .margin_softmax import NORM_FLOOR

__all__ = ["P2SGradLoss"]


class _P2SGradValues(torch.autograd.Function):
    """Per-sample ``1/C sum_j (clamp(cos(x_i, w_j), -1, 1) - [j = y_i])^2`` from raw embeddings ``x`` (rows) and
    raw class weights ``w`` (columns), with the gradient written out: ``2/C (cos_ij - [j = y_i])`` per cell
    (zero where the clamp is active), two matrix products, and the projections of the two normalisations.
    One ``(batch, classes)`` matrix is kept and each direction passes over it about twice, where autograd's
    chain of a normalising distance, a clamp and a squared error makes several passes more."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        x_norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        w_norm = torch.linalg.vector_norm(w, dim=0, keepdim=True)
        x_inv, w_inv = x_norm.clamp_min(NORM_FLOOR).reciprocal(), w_norm.clamp_min(NORM_FLOOR).reciprocal()
        x_unit, w_unit = x * x_inv, w * w_inv
        cos = x_unit @ w_unit
        low, high = torch.aminmax(cos)
        clamped = bool(low < -1) or bool(high > 1)
        outside = ((cos < -1) | (cos > 1)) if clamped else None
        if clamped:
            cos.clamp_(-1, 1)
        own = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
        num_classes = cos.shape[1]
        values = (torch.linalg.vector_norm(cos, dim=1).square() - 2 * own + 1) / num_classes
        # x itself is kept (an input: no copy); its unit rows are rebuilt where the backward needs them
        ctx.save_for_backward(x, w_unit, x_inv, w_inv, x_norm >= NORM_FLOOR, w_norm >= NORM_FLOOR, cos, labels)
        ctx.outside = outside
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w_unit, x_inv, w_inv, x_normalised, w_normalised, cos, labels = ctx.saved_tensors
        weight = grad.unsqueeze(1) * (2.0 / cos.shape[1])
        cells = cos * weight  # d value_i / d cos_ij, before the target's -1
        cells.scatter_add_(1, labels.unsqueeze(1), -weight)
        if ctx.outside is not None:
            cells.masked_fill_(ctx.outside, 0.0)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # radial part x_unit . d_unit = sum_j cells_ij cos_ij (zero cells where the clamp acts), none below
            # the norm floor; then (d_unit - x_unit * radial) / ||x|| written as d_unit / ||x|| - x radial / ||x||^2
            radial = (cells * cos).sum(dim=1, keepdim=True) * x_normalised
            grad_x = (cells @ w_unit.t()).mul_(x_inv).addcmul_(x, radial * x_inv * x_inv, value=-1)
        if ctx.needs_input_grad[1]:
            d_unit = x.t() @ cells.mul_(x_inv)  # x_unit^T cells, with x_inv moved onto the cells' rows
            radial = (w_unit * d_unit).sum(dim=0, keepdim=True) * w_normalised
            grad_w = (d_unit - w_unit * radial) * w_inv
        return grad_x, grad_w, None


def _unit_columns(weights: Tensor) -> Tensor:
    """Fill ``weights`` in place with uniform values in ``[-1, 1]``, each column rescaled to norm 1."""
    weights.uniform_(-1, 1)
    return weights.div_(torch.linalg.vector_norm(weights, dim=0, keepdim=True).clamp(min=1e-12))


class P2SGradLoss(BaseClassWeightLoss):
    """P2SGrad loss (Zhang, Zhao, Liu, Yan, Jiang, Wang and Li, 2019, "P2SGrad: Refined Gradients for
    Optimizing Deep Face Models", CVPR, arXiv:1905.02479), in the mean-squared-error form of Wang and Yamagishi,
    2021, "A Comparative Study on Recent Neural Spoofing Countermeasures for Synthetic Speech Detection",
    Interspeech, arXiv:2103.11326.

    P2SGrad replaces the gradient of a margin softmax by ``cos(theta_ij) - [j = y_i]`` for every class ``j``,
    which is the gradient of a squared error between the cosine logits and the one-hot target::

        loss_i = 1/C sum_j (cos(x_i, w_j) - [j = y_i])^2

    with ``w_j`` the ``j``-th column of ``weight`` and ``C`` the number of classes. The default ``MeanReducer``
    averages over the batch, so the loss is the mean over all ``batch x C`` entries, as in the reference
    implementations (the paper's per-sample sum is ``C`` times larger; only the learning rate differs).

    Differences from pytorch-metric-learning: the columns of ``weight`` are normalised inside the
    (differentiable) cosine instead of being rescaled in place at every call, so the parameter is never
    mutated and its gradient is the one of the cosine (the embeddings' gradient and the value are the same
    as long as the columns have norm 1, which they do at initialisation); the per-sample values go through
    ``reducer`` (pytorch-metric-learning returns an already averaged value); and a miner's
    ``indices_tuple`` is rejected with an error, as pytorch-metric-learning does.

    Args:
        descriptors_dim: the embedding dimension (pytorch-metric-learning's name); or give ``embedding_size``.
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, the same as ``descriptors_dim``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default uniform in
            ``[-1, 1]`` with unit-norm columns), ``distance`` (must be ``CosineSimilarity()``, the default),
            ``reducer`` (default ``MeanReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Attributes:
        weight: ``(descriptors_dim, num_classes)`` class weights, one per column, float32.

    Example:
        >>> loss_fn = P2SGradLoss(2, 2, weight_init_func=torch.nn.init.eye_)
        >>> loss_fn(torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1])).item()
        0.0
    """

    default_distance = CosineSimilarity
    default_weight_init = staticmethod(_unit_columns)

    def __init__(
        self,
        descriptors_dim: int | None = None,
        num_classes: int | None = None,
        *,
        embedding_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        num_classes, embedding_size = resolve_class_sizes(
            name, num_classes, embedding_size, descriptors_dim__embedding_size=descriptors_dim
        )
        super().__init__(num_classes, embedding_size, **kwargs)
        if not isinstance(self.distance, CosineSimilarity):
            raise ValueError(message(name, "distance", "a CosineSimilarity", type(self.distance).__name__))
        self.descriptors_dim = embedding_size
        self.weight = self.new_weights(embedding_size, num_classes)

    def class_weights(self) -> Tensor:
        return self.weight.t()

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by BaseClassWeightLoss.forward
        if indices_tuple is not None:
            rule = "None: this loss scores every sample against every class"
            raise ValueError(message(type(self).__name__, "indices_tuple", rule, "a tuple of tensors"))
        with full_precision(embeddings) as x:
            if type(self.distance) is CosineSimilarity and self.distance.power == 1:
                values = _P2SGradValues.apply(x, self.weight.to(x.dtype), labels)
            else:  # a subclass of the distance may compute otherwise: through its own forward
                cos = self.get_logits(x).clamp(-1, 1)
                # sum_j (cos_ij - [j = y_i])^2 without a one-hot matrix
                own = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
                values = (cos.square().sum(dim=1) - 2 * own + 1) / self.num_classes
        return {"loss": sample_terms(values)}
