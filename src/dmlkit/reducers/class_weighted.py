from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._validation import _Described, message
from ..types import Terms
from .base import BaseReducer

__all__ = ["ClassWeightedReducer"]


class ClassWeightedReducer(BaseReducer):
    """The mean of the values, each multiplied by the weight of its anchor's class.

    A value whose anchor (the element itself, or the first index of a pair or triplet) has label ``c``
    counts ``weights[c]`` times: ``mean(values * weights[labels[anchors]])``. Useful to up-weight rare classes.

    pytorch-metric-learning (2.9.0) gives the same on losses with one value per element, pair or triplet. The
    losses that it returns as an ``(N, 1)`` column (MultiSimilarity, Circle, LiftedStructure,
    GeneralizedLiftedStructure, TupletMargin) broadcast there against the ``(N,)`` weights, which yields
    ``mean(values) * mean(weights[labels])`` instead.

    Args:
        weights: one weight per class, indexed by label (a 1-D tensor or a sequence of numbers). It is kept
            as a buffer and cast to the values' device and dtype when reducing.
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> from dmlkit.types import Terms
        >>> reducer = ClassWeightedReducer(weights=[1.0, 3.0])
        >>> reducer(Terms(torch.tensor([2.0, 2.0]), torch.tensor([0, 1])), torch.zeros(2, 4), torch.tensor([0, 1]))
        tensor(4.)
    """

    weights: Tensor

    def __init__(self, weights: Tensor | Sequence[float], collect_stats: bool = False) -> None:
        super().__init__(collect_stats=collect_stats)
        name = "ClassWeightedReducer"
        if not isinstance(weights, Tensor):
            if not isinstance(weights, Sequence) or isinstance(weights, str):
                got = _Described(type(weights).__name__)
                raise TypeError(message(name, "weights", "a 1-D tensor or a sequence of numbers", got))
            weights = torch.as_tensor(weights, dtype=torch.get_default_dtype())
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(
                message(name, "weights", "1-D with one weight per class", _Described(f"shape {tuple(weights.shape)}"))
            )
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(message(name, "weights", "real numbers", _Described(f"dtype {weights.dtype}")))
        if not bool(torch.isfinite(weights).all()):
            raise ValueError(message(name, "weights", "finite (no NaN or Inf)", _Described(str(weights.tolist()))))
        self.register_buffer("weights", weights)

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        name = "ClassWeightedReducer"
        if labels is None:
            raise ValueError(message(name, "labels", "given (weights are looked up by the anchors' labels)", None))
        anchor_labels = labels.to(terms.values.device)[terms.anchors]
        low, high = int(anchor_labels.min()), int(anchor_labels.max())
        if low < 0:
            raise ValueError(message(name, "labels", ">= 0 to index `weights`", _Described(f"label {low}")))
        if high >= self.weights.numel():
            raise ValueError(
                message(
                    name,
                    "weights",
                    f"long enough to index every anchor label (largest label {high})",
                    _Described(f"{self.weights.numel()} weight(s)"),
                )
            )
        weights = self.weights.to(device=terms.values.device, dtype=terms.values.dtype)
        return (terms.values * weights[anchor_labels]).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.weights.numel()}"
