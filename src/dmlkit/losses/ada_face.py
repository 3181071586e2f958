"""AdaFace (quality-adaptive margin) loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .margin_softmax import column_logits, cosine_margin_terms, new_class_columns

__all__ = ["AdaFaceLoss"]

#: bounds on the feature norm before it enters the statistics (the reference implementation's)
_NORM_MIN, _NORM_MAX = 1e-3, 100.0
#: added to the running standard deviation before dividing by it
_STD_EPS = 1e-3
#: cosines are clamped this far inside [-1, 1] before ``acos`` (finite gradient at angles 0 and pi)
_COS_EPS = 1e-6


class AdaFaceLoss(BaseClassWeightLoss):
    """AdaFace loss (Kim et al., 2022, "AdaFace: Quality Adaptive Margin for Face Recognition",
    arXiv:2204.00964).

    A softmax cross-entropy over ``scale * cos(theta_ij)`` (unit embeddings, unit class weights) whose target
    logit gets a margin that adapts to the image quality, measured by the feature norm ``||z_i||`` of the
    embedding **before** normalisation (so pass the un-normalised embeddings)::

        z_hat = clip(h * (||z|| - mu) / (sigma + 1e-3), -1, 1)
        g_angle = -margin * z_hat            g_add = margin + margin * z_hat
        target logit = scale * (cos(clip(theta + g_angle, 0, pi)) - g_add)

    A high-norm (easy, high-quality) sample gets an ArcFace-like angular margin, a low-norm one a CosFace-like
    additive margin that emphasises easy samples less. ``mu`` and ``sigma`` are the batches' mean and
    (unbiased) standard deviation of ``||z||`` (clipped to ``[1e-3, 100]``), tracked as exponential moving
    averages in the buffers ``batch_mean`` (starts at 20) and ``batch_std`` (starts at 100); the norms carry
    no gradient. The statistics are updated before use on each call in training mode only (the reference
    implementation also updates them in evaluation; a batch of one sample updates only the mean). Keeping
    ``theta + g_angle`` within ``[0, pi]`` keeps the target logit monotone in ``theta``.

    pytorch-metric-learning has no AdaFace; the parameter names follow the other margin losses here
    (``margin`` for the paper's ``m``, ``scale`` for ``s``) and ``W`` has shape
    ``(embedding_size, num_classes)`` like ``ArcFaceLoss.W``. One term per sample; a miner's
    ``indices_tuple`` weights each sample by how often it was mined. Under autocast the computation runs in
    float32.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        margin: the margin ``m`` (radians for the angular part, cosine units for the additive part), ``>= 0``.
        h: how strongly the normalised norm moves the margin (``h = 0.333`` puts about 68% of samples in
            ``z_hat`` within ``[-0.333, 0.333]``), ``>= 0``.
        scale: the logit scale ``s``, ``> 0``.
        t_alpha: the weight of the current batch in the moving averages, ``0 < t_alpha <= 1``
            (``0.01`` is a momentum of 0.99, as in the paper).
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``torch.nn.init.normal_``), ``distance`` (must be a ``CosineSimilarity``, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = AdaFaceLoss(num_classes=3, embedding_size=4)
        >>> loss_fn(torch.randn(6, 4) * 20, torch.tensor([0, 1, 2, 0, 1, 2])).ndim
        0
        >>> sorted(name for name, _ in loss_fn.named_buffers())
        ['batch_mean', 'batch_std']
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.4,
        h: float = 0.333,
        scale: float = 64,
        t_alpha: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_range(name, "h", h, low=0)
        self.W = new_class_columns(self, scale)
        check_range(name, "t_alpha", t_alpha, low=0, high=1, low_inclusive=False)
        self.margin = margin
        self.h = h
        self.scale = scale
        self.t_alpha = t_alpha
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def class_weights(self) -> Tensor:
        return self.W.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``scale * cos(theta_ij)``: the logits without margin."""
        return column_logits(self.distance, embeddings, self.W, self.scale)

    def _update_statistics(self, norms: Tensor) -> None:
        alpha = self.t_alpha
        mean: Tensor = self.batch_mean  # type: ignore[assignment]
        std: Tensor = self.batch_std  # type: ignore[assignment]
        mean.mul_(1 - alpha).add_(alpha * norms.mean().to(mean.dtype))
        if len(norms) > 1:
            std.mul_(1 - alpha).add_(alpha * norms.std().to(std.dtype))

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by the base
        return cosine_margin_terms(self.distance, embeddings, self.W, labels, self.scale, indices_tuple, self._margined)

    def _margined(self, cosine: Tensor, embeddings: Tensor) -> Tensor:
        """``cos(clip(theta + g_angle, 0, pi)) - g_add`` from the (full-precision) embeddings' norms."""
        norms = torch.linalg.vector_norm(embeddings.detach(), dim=1).clamp(_NORM_MIN, _NORM_MAX)
        if self.training:
            with torch.no_grad():
                self._update_statistics(norms)
        mean: Tensor = self.batch_mean.to(embeddings.dtype)  # type: ignore[operator,assignment]
        std: Tensor = self.batch_std.to(embeddings.dtype)  # type: ignore[operator,assignment]
        quality = ((norms - mean) / (std + _STD_EPS) * self.h).clamp(-1, 1)
        angle = torch.acos(cosine.clamp(-1 + _COS_EPS, 1 - _COS_EPS))
        shifted = (angle - self.margin * quality).clamp(0, math.pi)
        return torch.cos(shifted) - (self.margin + self.margin * quality)
