"""Sub-center ArcFace loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import check_embeddings, check_labels, check_range, message
from ..distances import CosineSimilarity
from ..types import Terms
from .arc_face import check_degrees
from .class_weights import BaseClassWeightLoss
from .functional import full_precision
from .margin_softmax import (
    NORM_FLOOR,
    additive_angular_margin,
    check_scale,
    margin_cross_entropy,
    unit_rows,
)

__all__ = ["SubCenterArcFaceLoss"]


class SubCenterArcFaceLoss(BaseClassWeightLoss):
    """Sub-center ArcFace loss (Deng et al., 2020, "Sub-center ArcFace: Boosting Face Recognition by
    Large-scale Noisy Web Faces", ECCV 2020).

    ArcFace where every class owns ``sub_centers`` weight vectors and a sample's cosine to a class is the
    largest over that class's sub-centres: logits ``scale * max_k cos(theta_ijk)``, the target logit
    ``scale * cos(theta + m)`` (``scale * (cos(theta) - m sin(m))`` past ``theta = pi - m``). Noisy samples
    gather on non-dominant sub-centres; :meth:`get_outliers` finds them. One term per sample; a miner's
    ``indices_tuple`` weights each sample by how often it was mined. Under autocast the computation runs in
    float32.

    As in pytorch-metric-learning, the margin is in **degrees** and ``W`` has shape
    ``(embedding_size, num_classes * sub_centers)``, column ``c * sub_centers + k`` being sub-centre ``k`` of
    class ``c``. ``num_classes`` and ``embedding_size`` may be given by position or by keyword.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the additive angular margin in degrees, ``0 <= margin < 180``.
        scale: the logit scale ``s``, ``> 0``.
        sub_centers: weight vectors per class, ``>= 1``.
        **kwargs: ``weight_regularizer`` (it sees every sub-centre), ``weight_reg_weight``,
            ``weight_init_func`` (default ``torch.nn.init.normal_``), ``distance`` (must be a
            ``CosineSimilarity``, the default), ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = SubCenterArcFaceLoss(num_classes=3, embedding_size=4, sub_centers=2)
        >>> loss_fn.W.shape
        torch.Size([4, 6])
        >>> emb, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> loss_fn(emb, labels).ndim
        0
        >>> outliers, dominant_centers = loss_fn.get_outliers(emb, labels, threshold=75)
        >>> dominant_centers.shape
        torch.Size([4, 3])
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64,
        sub_centers: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        self._radians = check_degrees(name, margin)
        check_scale(name, scale)
        check_range(name, "sub_centers", sub_centers, low=1, integer=True)
        self.margin = margin
        self.scale = scale
        self.sub_centers = sub_centers
        self.W = self.new_weights(embedding_size, num_classes * sub_centers)

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``scale * max_k cos(theta_ijk)``: the logits without margin, ``(batch, num_classes)``."""
        with full_precision(embeddings) as emb:
            logits, _ = _BestSubCenterLogits.apply(
                unit_rows(self.distance, emb), self.W.to(emb.dtype), self.scale, self.sub_centers, None
            )
            return logits

    def _unit_columns(self, dtype: torch.dtype) -> Tensor:
        """``W`` with every column scaled to unit norm, ``(embedding_size, num_classes * sub_centers)``; column
        ``c * sub_centers + k`` is sub-centre ``k`` of class ``c`` (pytorch-metric-learning's layout)."""
        w = self.W.to(dtype)
        return w * self.distance.get_norm(w, dim=0, keepdim=True).clamp_min(NORM_FLOOR).reciprocal()

    def _own_sub_center_cosines(self, unit_emb: Tensor, unit_columns: Tensor, labels: Tensor) -> Tensor:
        """``(batch, sub_centers)`` cosines of each sample to its own class's sub-centres."""
        own = unit_columns.view(unit_columns.shape[0], self.num_classes, self.sub_centers).index_select(1, labels)
        return (unit_emb.t().unsqueeze(2) * own).sum(dim=0)  # own: (embedding_size, batch, sub_centers)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by the base
        with full_precision(embeddings) as emb:
            logits, own = _BestSubCenterLogits.apply(
                unit_rows(self.distance, emb), self.W.to(emb.dtype), self.scale, self.sub_centers, labels
            )
            target = additive_angular_margin(own / self.scale, self._radians) * self.scale
            return {"loss": margin_cross_entropy(logits, labels, target, indices_tuple)}

    def get_outliers(
        self, embeddings: Tensor, labels: Tensor, threshold: float = 75, return_dominant_centers: bool = True
    ) -> tuple[Tensor, Tensor] | Tensor:
        """Samples farther than ``threshold`` degrees from their class's dominant sub-centre.

        A class's dominant sub-centre is the one nearest to most of its samples in the batch (ties go to the
        lowest index; a class without samples keeps sub-centre 0). As in pytorch-metric-learning, outliers
        are listed class by class, in batch order within a class.

        Args:
            embeddings: ``(batch, embedding_size)``.
            labels: ``(batch,)`` class indices.
            threshold: the largest angle in degrees to the dominant sub-centre that is not an outlier,
                ``0 <= threshold <= 180``.
            return_dominant_centers: also return the dominant sub-centres.

        Returns:
            The outliers' batch indices (int64), and with ``return_dominant_centers`` also the dominant
            sub-centres as columns, ``(embedding_size, num_classes)`` (a detached copy). pytorch-metric-learning
            returns the pair even when ``return_dominant_centers=False``; here the indices come alone then.
        """
        name = f"{type(self).__name__}.get_outliers"
        check_embeddings(name, embeddings)
        check_labels(name, labels, embeddings.shape[0])
        check_range(name, "threshold", threshold, low=0, high=180)
        labels = labels.to(embeddings.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise ValueError(message(name, "labels", f"class indices in [0, {self.num_classes})", bad))
        with torch.no_grad(), full_precision(embeddings) as emb:
            cosines = self._own_sub_center_cosines(unit_rows(self.distance, emb), self._unit_columns(emb.dtype), labels)
            k = self.sub_centers
            votes = torch.bincount(labels * k + cosines.argmax(dim=1), minlength=self.num_classes * k)
            dominant = votes.view(self.num_classes, k).argmax(dim=1)
            to_dominant = cosines.gather(1, dominant[labels].unsqueeze(1)).squeeze(1)
            outliers = torch.nonzero(to_dominant < math.cos(math.radians(threshold))).squeeze(1)
            outliers = outliers[torch.sort(labels[outliers], stable=True).indices]
            if not return_dominant_centers:
                return outliers
            columns = torch.arange(self.num_classes, device=dominant.device) * k + dominant
            return outliers, self.W.detach().to(emb.dtype)[:, columns].clone()


#: up to this many (sample, sub-centre) cells the forward takes one product against every sub-centre and the
#: backward one routed gradient; above it, one sub-centre at a time (less memory, fewer passes per cell)
ONE_PRODUCT_CELLS = 1 << 18


def _winner_dtype(sub_centers: int) -> torch.dtype:
    """The smallest integer type that holds a sub-centre index."""
    return torch.uint8 if sub_centers <= 256 else torch.int32


class _BestSubCenterLogits(torch.autograd.Function):
    """``logits[i, c] = scale * max_k cos(x_i, w_{c,k})`` for unit rows ``x`` and the raw weight columns ``w``
    (``(embedding_size, classes * sub_centers)``, column ``c * sub_centers + k``), and ``own[i] =
    logits[i, labels[i]]`` (empty without labels).

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
        if one_product:
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
        with_own = ctx.has_labels and grad_own is not None
        own_center = winner[rows, labels].long() if with_own else None
        if ctx.one_product:
            centers = torch.arange(sub_centers, dtype=winner.dtype, device=winner.device)
            # one-hot of the winners, then the gradient times it in place (a byte-to-float copy is one fast
            # pass; a float-times-byte product would convert the bytes into a temporary first)
            routed = winner.unsqueeze(2).eq(centers).view(torch.uint8).to(x.dtype).mul_(grad_logits.unsqueeze(2))
            if with_own:
                routed.index_put_((rows, labels, own_center), grad_own, accumulate=True)
            grad_x = _column_gradients(x, w, routed.view(batch, -1), scaled_inverse, radial_factor, None, grad_w)
            return grad_x, grad_w, None, None, None
        by_center, grad_by_center = w.view(size, -1, sub_centers), grad_w.view(size, -1, sub_centers)
        scaled_inverse, radial_factor = scaled_inverse.view(-1, sub_centers), radial_factor.view(-1, sub_centers)
        cell_grad, grad_x = torch.empty_like(grad_logits), torch.zeros_like(x)
        for k in range(sub_centers):
            # the cells this sub-centre won, in one buffer for every sub-centre: the byte mask copied to floats,
            # times the gradient in place (no branch per cell, no temporary)
            cell_grad.copy_(winner.eq(k).view(torch.uint8)).mul_(grad_logits)
            if with_own:
                cell_grad.index_put_((rows, labels), grad_own * own_center.eq(k), accumulate=True)
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
