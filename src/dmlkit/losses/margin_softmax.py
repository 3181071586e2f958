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
    "column_logits",
    "center_logits",
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


def column_logits(distance: BaseDistance, embeddings: Tensor, columns: Tensor, scale: float) -> Tensor:
    """``scale * cos(x_i, w_j)`` against class weights stored one per column, in full precision."""
    with full_precision(embeddings) as emb:
        return center_logits(unit_rows(distance, emb), columns.to(emb.dtype), scale)[0]


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
        logits, own = center_logits(unit_rows(distance, emb), columns.to(emb.dtype), scale, 1, labels)
        return {"loss": margin_cross_entropy(logits, labels, margin(own / scale, emb) * scale, indices_tuple)}


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


#: up to this many (sample, sub-centre) cells the forward takes one product against every sub-centre and the
#: backward one routed gradient; above it, one sub-centre at a time (less memory, fewer passes per cell)
ONE_PRODUCT_CELLS = 1 << 18


def _winner_dtype(sub_centers: int) -> torch.dtype:
    """The smallest integer type that holds a sub-centre index."""
    return torch.uint8 if sub_centers <= 256 else torch.int32


class _CenterLogits(torch.autograd.Function):
    """``logits[i, c] = scale * max_k cos(x_i, w_{c,k})`` for unit rows ``x`` and the raw weight columns ``w``
    (``(embedding_size, classes * sub_centers)``, column ``c * sub_centers + k``), and ``own[i] =
    logits[i, labels[i]]`` (empty without labels). With one centre per class there is no maximum to take.

    The columns are normalised here and the winning sub-centre of each cell is kept as a byte. Above
    ``ONE_PRODUCT_CELLS`` cells, the work goes one sub-centre at a time, so no ``(batch, classes *
    sub_centers)`` product and no unit copy of ``w`` is ever whole: the forward keeps a running maximum and the
    backward routes each cell's gradient to its winner. The column norms are differentiated in place (a column
    shorter than ``NORM_FLOOR`` is scaled by the constant ``1 / NORM_FLOOR``). Ties go to the lowest
    sub-centre.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, w: Tensor, scale: float, sub_centers: int, labels: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        size = w.shape[0]
        norms = w.square().sum(dim=0).sqrt_()  # a column reduction, faster than vector_norm along dim 0
        scaled_inverse = norms.clamp_min(NORM_FLOOR).reciprocal().mul_(scale)
        one_product = len(x) * w.shape[1] <= ONE_PRODUCT_CELLS
        if sub_centers == 1:
            logits, winner = x @ (w * scaled_inverse), x.new_empty(0, dtype=torch.uint8)
        elif one_product:
            products = (x @ (w * scaled_inverse)).view(len(x), -1, sub_centers)
            logits, index = products.max(dim=2)  # the first maximum on a tie
            winner = index.to(_winner_dtype(sub_centers))
        else:
            scaled_inverse = scaled_inverse.view(-1, sub_centers)
            by_center = w.view(size, -1, sub_centers)
            logits = x @ (by_center[:, :, 0] * scaled_inverse[:, 0])
            winner = torch.zeros(logits.shape, dtype=_winner_dtype(sub_centers), device=x.device)
            for k in range(1, sub_centers):
                product = x @ (by_center[:, :, k] * scaled_inverse[:, k])
                # sub-centres are visited in increasing order, so max(winner, k * better) is k where this one
                # wins (a strict win: ties keep the lower index); integer arithmetic, no branch per cell
                better = (product > logits).to(winner.dtype).mul_(k)
                torch.maximum(winner, better, out=winner)
                torch.maximum(logits, product, out=logits)
                del product, better
        own = logits.new_empty(0) if labels is None else logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(x, w, norms, winner, labels if labels is not None else x.new_empty(0, dtype=torch.long))
        ctx.scale, ctx.sub_centers, ctx.one_product = scale, sub_centers, one_product
        ctx.has_labels = labels is not None
        return logits, own

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_logits: Tensor | None, grad_own: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w, norms, winner, labels = ctx.saved_tensors
        scale, sub_centers = ctx.scale, ctx.sub_centers
        size, batch = w.shape[0], len(x)
        inverse = norms.clamp_min(NORM_FLOOR).reciprocal()
        scaled_inverse = inverse * scale
        # d(1/n)/dw = -w / n^3 for a column above the floor, 0 for a clamped one
        radial_factor = inverse.square().mul_(norms > NORM_FLOOR)
        grad_w = torch.empty_like(w)
        if grad_logits is None:
            grad_logits = x.new_zeros(winner.shape)
        rows = torch.arange(batch, device=x.device)
        own = grad_own if ctx.has_labels else None  # the gradient of each sample's own-class entry
        if sub_centers == 1:
            routed = grad_logits.clone()
            if own is not None:
                routed.index_put_((rows, labels), own, accumulate=True)
            grad_x = _column_gradients(x, w, routed, scaled_inverse, radial_factor, None, grad_w)
            return grad_x, grad_w, None, None, None
        own_center = winner[rows, labels].long() if own is not None else labels  # (labels: empty then)
        if ctx.one_product:
            centers = torch.arange(sub_centers, dtype=winner.dtype, device=winner.device)
            # one-hot of the winners, then the gradient times it in place (a byte-to-float copy is one fast
            # pass; a float-times-byte product would convert the bytes into a temporary first)
            routed = winner.unsqueeze(2).eq(centers).view(torch.uint8).to(x.dtype).mul_(grad_logits.unsqueeze(2))
            if own is not None:
                routed.index_put_((rows, labels, own_center), own, accumulate=True)
            grad_x = _column_gradients(x, w, routed.view(batch, -1), scaled_inverse, radial_factor, None, grad_w)
            return grad_x, grad_w, None, None, None
        by_center, grad_by_center = w.view(size, -1, sub_centers), grad_w.view(size, -1, sub_centers)
        scaled_inverse, radial_factor = scaled_inverse.view(-1, sub_centers), radial_factor.view(-1, sub_centers)
        cell_grad, grad_x = torch.empty_like(grad_logits), torch.zeros_like(x)
        for k in range(sub_centers):
            # the cells this sub-centre won, in one buffer for every sub-centre: the byte mask copied to floats,
            # times the gradient in place (no branch per cell, no temporary)
            cell_grad.copy_(winner.eq(k).view(torch.uint8)).mul_(grad_logits)
            if own is not None:
                cell_grad.index_put_((rows, labels), own * own_center.eq(k), accumulate=True)
            _column_gradients(
                x,
                by_center[:, :, k],
                cell_grad,
                scaled_inverse[:, k],
                radial_factor[:, k],
                grad_x,
                grad_by_center[:, :, k],
            )
        return grad_x, grad_w, None, None, None


def _column_gradients(
    x: Tensor,
    columns: Tensor,
    cell_grad: Tensor,
    scaled_inverse: Tensor,
    radial_factor: Tensor,
    grad_x: Tensor | None,
    grad_columns: Tensor,
) -> Tensor:
    """Writes into ``grad_columns`` the gradient of ``sum(cell_grad * x @ (columns * scaled_inverse))`` through
    the raw ``columns``, where ``scaled_inverse = scale / norm`` (``radial_factor = 1 / norm^2`` for a column
    above the norm floor, else 0, differentiates the norm), and returns its gradient through ``x`` added to
    ``grad_x`` (None: a new tensor).

    ``cell_grad`` (the caller's buffer) is scaled in place, and ``grad_columns`` doubles as the scratch buffer of
    the radial term; the gradient through ``x`` comes last, once the column work is freed.
    """
    cell_grad.mul_(scaled_inverse)
    direct = x.t() @ cell_grad  # the gradient at fixed norms, (embedding_size, columns)
    radial = torch.mul(direct, columns, out=grad_columns).sum(dim=0).mul_(radial_factor)
    torch.mul(columns, radial, out=grad_columns)
    torch.sub(direct, grad_columns, out=grad_columns)
    del direct
    return cell_grad @ columns.t() if grad_x is None else grad_x.addmm_(cell_grad, columns.t())


def center_logits(
    unit_x: Tensor, columns: Tensor, scale: float, centers_per_class: int = 1, labels: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``scale * max_k cos(x_i, w_{c,k})`` for unit rows ``unit_x`` against the raw class ``columns``
    (``(embedding_size, classes * centers_per_class)``, column ``c * centers_per_class + k``; one centre: the
    plain scaled cosines), and each sample's own-class entry (``labels`` given; else an empty tensor).

    Columns are normalised inside one autograd Function that keeps no unit copy of them and writes its own
    backward: less memory than autograd of the formula, and the same values and gradients.
    """
    return _CenterLogits.apply(unit_x, columns, scale, centers_per_class, labels)
