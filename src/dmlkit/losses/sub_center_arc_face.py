"""Sub-center ArcFace loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_embeddings, check_labels, check_range, message
from ..distances import CosineSimilarity
from ..types import Terms
from .arc_face import check_degrees
from .class_weights import BaseClassWeightLoss
from .functional import full_precision
from .margin_softmax import (
    NORM_FLOOR,
    additive_angular_margin,
    center_logits,
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
            logits, _ = center_logits(unit_rows(self.distance, emb), self.W.to(emb.dtype), self.scale, self.sub_centers)
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
            logits, own = center_logits(
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
