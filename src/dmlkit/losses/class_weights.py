"""The base of losses that own learnable per-class weights or proxies (classification and proxy losses)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_range, is_real_number, message
from ..regularizers import BaseRegularizer
from ..types import Terms
from .base import BaseMetricLossFunction

__all__ = ["BaseClassWeightLoss", "resolve_class_sizes"]


class BaseClassWeightLoss(BaseMetricLossFunction):
    """Base of the losses that learn one (or several) weight vectors per class: margin-softmax losses and
    proxy losses.

    A subclass creates its parameter with :meth:`new_weights` under pytorch-metric-learning's attribute name
    (``W``, ``proxies``, ``fc`` …), returns it one row per class (or per proxy) from :meth:`class_weights`,
    and implements :meth:`compute_terms` as every loss does. The base checks that labels name a class
    (``0 <= label < num_classes``) and adds ``weight_regularizer(class_weights()) * weight_reg_weight`` as the
    ``"weight_reg_loss"`` group. These losses compare embeddings with their own weights, so they take no
    reference set.

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        weight_regularizer: an optional penalty on the class weights (rows = classes).
        weight_reg_weight: the penalty's weight, ``>= 0``.
        weight_init_func: called once on each new weight tensor (in place); defaults to the class's
            ``default_weight_init``.
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.
    """

    supports_ref_emb: ClassVar[bool] = False
    #: how new weights are initialised when ``weight_init_func`` is not given (in place, like ``nn.init``).
    default_weight_init: ClassVar[Callable[..., Any]] = staticmethod(nn.init.normal_)

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        weight_regularizer: BaseRegularizer | None = None,
        weight_reg_weight: float = 1,
        weight_init_func: Callable[[Tensor], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        for arg, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if not is_real_number(value, integer=True) or value < 1:
                raise ValueError(message(name, arg, "a positive integer", value))
        if weight_regularizer is not None and not isinstance(weight_regularizer, BaseRegularizer):
            rule = "a dmlkit regularizer (e.g. RegularFaceRegularizer())"
            raise TypeError(message(name, "weight_regularizer", rule, type(weight_regularizer).__name__))
        check_range(name, "weight_reg_weight", weight_reg_weight, low=0)
        if weight_init_func is not None and not callable(weight_init_func):
            rule = "a callable that fills a tensor in place"
            raise TypeError(message(name, "weight_init_func", rule, weight_init_func))
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = weight_reg_weight
        self.weight_init_func = weight_init_func if weight_init_func is not None else type(self).default_weight_init

    def new_weights(self, *shape: int) -> nn.Parameter:
        """A new float32 parameter of ``shape``, filled by ``weight_init_func``."""
        weights = torch.empty(*shape)
        with torch.no_grad():
            self.weight_init_func(weights)
        return nn.Parameter(weights)

    def class_weights(self) -> Tensor:
        """The learnable weights one row per class (or per proxy / sub-centre): what the regularizer sees."""
        raise NotImplementedError(f"{type(self).__name__} must implement class_weights().")

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``(batch, num_classes)`` scores of each embedding against each class, before any margin or scale."""
        weights = self.class_weights().to(embeddings.dtype)
        return self.distance(embeddings, weights)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        name = type(self).__name__
        if labels is None:
            raise ValueError(message(name, "labels", "given: this loss learns one weight vector per class", None))
        if isinstance(labels, Tensor) and labels.numel() > 0 and not labels.is_floating_point():
            low, high = torch.aminmax(labels)
            if int(low) < 0 or int(high) >= self.num_classes:
                bad = int(low) if int(low) < 0 else int(high)
                raise ValueError(message(name, "labels", f"class indices in [0, {self.num_classes})", bad))
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _warn_if_single_class(
        self, labels: Tensor | None, ref_labels: Tensor | None, indices_tuple: tuple[Tensor, ...] | None
    ) -> None:
        """A batch of one class is ordinary here: every sample is scored against every class's weights."""

    def regularization_terms(self, embeddings: Tensor) -> dict[str, Terms]:
        groups = super().regularization_terms(embeddings)
        if self.weight_regularizer is not None and self.weight_reg_weight != 0:
            penalty = self.weight_regularizer(self.class_weights()) * self.weight_reg_weight
            groups["weight_reg_loss"] = Terms.reduced(penalty)
        return groups


def resolve_class_sizes(
    owner: str, num_classes: int | None, embedding_size: int | None, **aliases: int | None
) -> tuple[int, int]:
    """``(num_classes, embedding_size)`` from the consistent names or pytorch-metric-learning's aliases.

    ``aliases`` maps an alias spelled ``<alias>__num_classes`` or ``<alias>__embedding_size`` to its value, e.g.
    ``resolve_class_sizes("P2SGradLoss", None, None, descriptors_dim__embedding_size=128, ...)``. Giving a size
    under two names with different values is an error.
    """
    sizes: dict[str, int | None] = {"num_classes": num_classes, "embedding_size": embedding_size}
    given: dict[str, str] = {key: key for key, value in sizes.items() if value is not None}
    for spelled, value in aliases.items():
        if value is None:
            continue
        alias, target = spelled.split("__")
        if sizes[target] is not None and sizes[target] != value:
            raise ValueError(
                message(owner, alias, f"the same as `{given[target]}` ({sizes[target]}) when both are given", value)
            )
        sizes[target] = value
        given.setdefault(target, alias)
    for key, value in sizes.items():
        if value is None:
            raise TypeError(f"{owner}: `{key}` is required.")
    return sizes["num_classes"], sizes["embedding_size"]  # type: ignore[return-value]
