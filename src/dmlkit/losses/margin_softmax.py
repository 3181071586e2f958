"""Steps shared by the margin-softmax losses (L-Softmax, SphereFace, ArcFace, sub-center ArcFace, CosFace,
AdaFace, normalized softmax): scaled cosine logits against the class weights, a margin on each sample's
target-class logit, and a per-sample cross-entropy.

Not a loss module of its own: the concrete losses call these functions (composition, not a base class).
Everything numerically delicate runs inside ``functional.full_precision`` (autocast off, half-precision inputs
promoted to float32), so a ``torch.autocast`` region yields a float32 loss with finite gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._validation import check_range
from ..distances import BaseDistance
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision, sample_terms

__all__ = [
    "check_scale",
    "new_class_columns",
    "target_values",
    "unit_rows",
    "scaled_product",
    "scaled_cosines",
    "cosine_logits",
    "column_logits",
    "margin_cross_entropy",
    "cosine_margin_terms",
    "angle_multiplier_terms",
    "multiple_angle_margin",
    "additive_angular_margin",
    "SINE_FLOOR",
    "NORM_FLOOR",
]

#: ``sin^2(theta)`` is floored here before its square root, so the gradient at angles 0 and pi stays finite.
SINE_FLOOR = 1e-12
#: norms below this count as this when normalising (``F.normalize``'s default ``eps``)
NORM_FLOOR = 1e-12


def check_scale(owner: str, scale: float, arg: str = "scale") -> None:
    check_range(owner, arg, scale, low=0, low_inclusive=False)


def new_class_columns(loss: BaseClassWeightLoss, scale: float, arg: str = "scale") -> nn.Parameter:
    """Checks ``scale > 0`` (named ``arg``), then returns new weights ``W`` for ``loss``, one column per class,
    ``(embedding_size, num_classes)``: pytorch-metric-learning's layout, so its ``state_dict`` loads unchanged."""
    check_scale(type(loss).__name__, scale, arg)
    return loss.new_weights(loss.embedding_size, loss.num_classes)


def target_values(matrix: Tensor, labels: Tensor) -> Tensor:
    """``matrix[i, labels[i]]`` for every row ``i``."""
    return matrix.gather(1, labels.unsqueeze(1)).squeeze(1)


def unit_rows(distance: BaseDistance, x: Tensor) -> Tensor:
    """``x`` with every row scaled to unit norm (norms below 1e-12 count as 1e-12, as in ``F.normalize``).

    One reciprocal per row and a multiplication: a lighter backward than a broadcast division.
    """
    return x * distance.get_norm(x, dim=1, keepdim=True).clamp_min(NORM_FLOOR).reciprocal()


def scaled_product(x: Tensor, w: Tensor, scale: float) -> Tensor:
    """``scale * x @ w.T`` with the scale applied to the smaller operand (or not at all when it is 1)."""
    if scale == 1:
        return x @ w.t()
    return x @ (w * scale).t() if len(w) <= len(x) else (x * scale) @ w.t()


def scaled_cosines(distance: BaseDistance, embeddings: Tensor, weights: Tensor, scale: float) -> Tensor:
    """``scale * cos(x_i, w_j)``: the ``(batch, classes)`` logits of the cosine losses, without margin."""
    return scaled_product(unit_rows(distance, embeddings), unit_rows(distance, weights), scale)


def cosine_logits(
    distance: BaseDistance, embeddings: Tensor, weights: Tensor, labels: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """``(scale * cos(x_i, w_j)`` for all pairs, ``cos(x_i, w_{labels[i]})`` row by row``), normalising once."""
    # class rows contiguous: the row gather below reads whole rows (W is stored column-major)
    x, w = unit_rows(distance, embeddings), unit_rows(distance, weights.contiguous())
    return scaled_product(x, w, scale), (x * w.index_select(0, labels)).sum(dim=1)


def column_logits(distance: BaseDistance, embeddings: Tensor, columns: Tensor, scale: float) -> Tensor:
    """:func:`scaled_cosines` against class weights stored one per column, in full precision."""
    with full_precision(embeddings) as emb:
        return scaled_cosines(distance, emb, columns.t().to(emb.dtype), scale)


def margin_cross_entropy(
    logits: Tensor, labels: Tensor, target_logits: Tensor | None, indices_tuple: tuple[Tensor, ...] | None
) -> Terms:
    """Per-sample softmax cross-entropy over ``logits`` whose target entries are replaced by ``target_logits``.

    ``logits`` are the scaled logits without margin, ``(batch, num_classes)``; ``target_logits`` (``(batch,)``)
    are the margined, scaled logits of each sample's own class (``None``: no margin). A miner's
    ``indices_tuple`` weights each sample by how often it was mined, relative to the most mined one
    (pytorch-metric-learning's convention for these losses).
    """
    return sample_terms(_TargetCrossEntropy.apply(logits, target_logits, labels), indices_tuple)


class _TargetCrossEntropy(torch.autograd.Function):
    """Per-sample ``-log softmax(z)[i, labels[i]]`` where ``z`` is ``logits`` with the entries ``[i, labels[i]]``
    replaced by ``target[i]`` (``target`` None: ``z = logits``). Only the log-probabilities are kept for the
    backward, ``softmax - onehot`` written in place on a fresh exponential: fewer passes over the
    ``(batch, classes)`` matrix than ``F.cross_entropy`` after a scatter (a zero-filled one-hot gradient, the
    log-softmax backward, the scatter's backward). A replaced entry's gradient goes to ``target``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor | None, labels: Tensor) -> Tensor:  # type: ignore[override]
        if target is not None:
            logits = logits.scatter(1, labels.unsqueeze(1), target.unsqueeze(1).to(logits.dtype))
        log_p = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_p, labels)
        ctx.replaced = target is not None
        return target_values(log_p, labels).neg()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        log_p, labels = ctx.saved_tensors
        index = labels.unsqueeze(1)
        cells = log_p.exp().mul_(grad.unsqueeze(1))
        if not ctx.replaced:
            return cells.scatter_add_(1, index, -grad.unsqueeze(1)), None, None
        grad_target = cells.gather(1, index).squeeze(1) - grad
        return cells.scatter_(1, index, 0.0), grad_target, None


def cosine_margin_terms(
    distance: BaseDistance,
    embeddings: Tensor,
    columns: Tensor,
    labels: Tensor,
    scale: float,
    indices_tuple: tuple[Tensor, ...] | None,
    margin: Callable[[Tensor, Tensor], Tensor],
) -> Mapping[str, Terms]:
    """The ``"loss"`` group of a cosine-margin loss (ArcFace, CosFace, AdaFace), in full precision.

    Logits ``scale * cos(theta_ij)`` against the class weights ``columns`` (one per column); each sample's
    target logit is ``scale * margin(cos(theta_i), embeddings)``, where ``embeddings`` are the full-precision
    ones (for a margin that depends on them).
    """
    with full_precision(embeddings) as emb:
        logits, cosine = cosine_logits(distance, emb, columns.t().to(emb.dtype), labels, scale)
        return {"loss": margin_cross_entropy(logits, labels, margin(cosine, emb) * scale, indices_tuple)}


def angle_multiplier_terms(
    distance: BaseDistance,
    embeddings: Tensor,
    columns: Tensor,
    labels: Tensor,
    margin: int,
    scale: float,
    indices_tuple: tuple[Tensor, ...] | None,
    unit_weights: bool,
) -> Mapping[str, Terms]:
    """The ``"loss"`` group of L-Softmax (``unit_weights=False``) and SphereFace (``True``), in full precision.

    Logits ``scale * ||w_j|| ||x_i|| cos(theta_ij)`` (``||w_j||`` taken as 1 with ``unit_weights``), the
    target's ``cos(theta)`` replaced by :func:`multiple_angle_margin`.
    """
    with full_precision(embeddings) as emb:
        weights = columns.t().to(emb.dtype).contiguous()  # whole rows for the gather below
        if unit_weights:
            weights = unit_rows(distance, weights)
        logits = scaled_product(emb, weights, scale)
        own = weights.index_select(0, labels)  # backward: index_add_, faster than index_put_
        magnitude = distance.get_norm(emb).clamp_min(NORM_FLOOR)
        if not unit_weights:
            magnitude = magnitude * distance.get_norm(own).clamp_min(NORM_FLOOR)
        cosine = (emb * own).sum(dim=1) / magnitude
        target = multiple_angle_margin(cosine, margin) * (magnitude * scale)
        return {"loss": margin_cross_entropy(logits, labels, target, indices_tuple)}


def multiple_angle_margin(cosine: Tensor, margin: int) -> Tensor:
    """L-Softmax's ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in ``[k pi / m, (k + 1) pi / m]``.

    ``cos(m theta)`` is the Chebyshev polynomial ``T_m(cos theta)`` (Liu et al., 2016, eq. 7), evaluated by
    the three-term recurrence, so no ``acos`` enters the gradient; ``k`` is piecewise constant. ``k`` stays
    below ``m`` so that the slope at ``theta = pi`` is the one of the last interval.
    """
    previous, current = torch.ones_like(cosine), cosine
    for _ in range(margin - 1):
        previous, current = current, 2 * cosine * current - previous
    with torch.no_grad():
        angle = torch.acos(cosine.clamp(-1, 1))
        k = torch.floor(angle / (math.pi / margin)).clamp(max=margin - 1)
        sign = 1 - 2 * torch.remainder(k, 2)
    return sign * current - 2 * k


def additive_angular_margin(cosine: Tensor, margin: float) -> Tensor:
    """ArcFace's ``cos(theta + m)`` while ``theta + m <= pi``, else ``cos(theta) - m sin(m)``.

    The fallback keeps the target logit decreasing in ``theta`` past ``pi - m`` (Deng et al., 2019).
    ``cos(theta + m)`` is expanded as ``cos(theta) cos(m) - sin(theta) sin(m)``: its gradient is finite at
    ``theta = 0`` and ``pi``, where the one through ``acos`` is not.
    """
    sine = ((1 - cosine) * (1 + cosine)).clamp(min=SINE_FLOOR).sqrt()
    shifted = cosine * math.cos(margin) - sine * math.sin(margin)
    return torch.where(cosine >= -math.cos(margin), shifted, cosine - margin * math.sin(margin))
