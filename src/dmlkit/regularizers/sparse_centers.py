from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import BaseDistance, CosineSimilarity
from ..reducers import BaseReducer, DivisorReducer
from ..types import Terms
from .base import BaseRegularizer

__all__ = ["SparseCentersRegularizer"]


class SparseCentersRegularizer(BaseRegularizer):
    """Centre-merging regularizer of SoftTriple (Qian et al., 2019, "SoftTriple Loss: Deep Metric Learning
    Without Triplet Sampling", ICCV, arXiv:1909.05235).

    ``x`` holds ``centers_per_class`` consecutive rows (centres) per class, class after class. Every pair
    ``t < t'`` of centres of the same class contributes ``sqrt(2 - 2 s(w_t, w_t'))``, the Euclidean
    distance between the unit-normalised centres; the values are summed and divided by
    ``2 * num_pairs = num_classes * centers_per_class * (centers_per_class - 1)`` by the default
    ``DivisorReducer``, as in the paper. Pulling centres of a class together lets redundant ones merge.

    The similarity is clamped to at most 1 and the radicand to at least the smallest positive normal number
    of the dtype, so that identical centres give a value of ~0 with a zero gradient instead of a NaN
    gradient (pytorch-metric-learning adds that number to 2, where it is lost to rounding).

    Args:
        num_classes: number of classes, ``>= 1``.
        centers_per_class: centres per class, ``> 1``.
        distance: must be a ``CosineSimilarity`` (the default).
        reducer: how the per-pair values become a scalar; ``DivisorReducer()`` by default.
        collect_stats: accepted for compatibility; statistics are not collected.

    Raises:
        ValueError: if an argument is out of range, if ``distance`` is not a ``CosineSimilarity``, or (when
            called) if ``x`` does not have ``num_classes * centers_per_class`` rows.

    Example:
        >>> centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
        >>> SparseCentersRegularizer(num_classes=2, centers_per_class=2)(centers)
        tensor(0.3536)
    """

    default_distance = CosineSimilarity
    default_reducer = DivisorReducer

    def __init__(
        self,
        num_classes: int,
        centers_per_class: int,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(distance=distance, reducer=reducer, collect_stats=collect_stats)
        name = type(self).__name__
        check_range(name, "num_classes", num_classes, low=1, integer=True)
        check_range(name, "centers_per_class", centers_per_class, low=1, low_inclusive=False, integer=True)
        if not isinstance(self.distance, CosineSimilarity):
            raise ValueError(message(name, "distance", "a CosineSimilarity", self.distance))
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class

    def compute_terms(self, x: Tensor) -> Terms:
        k = self.centers_per_class
        total = self.num_classes * k
        if x.shape[0] != total:
            raise ValueError(
                message(
                    type(self).__name__,
                    "x",
                    f"of shape (num_classes * centers_per_class, D) = ({total}, D)",
                    tuple(x.shape),
                )
            )
        d = self.distance
        # Only same-class pairs matter: one (k, k) similarity block per class instead of the full matrix.
        blocks = d.maybe_normalize(x).reshape(self.num_classes, k, -1)
        sim = d.compute_mat(blocks, blocks)
        if d.power != 1:
            sim = sim**d.power
        first, second = torch.triu_indices(k, k, offset=1, device=x.device)
        pair_sim = sim[:, first, second].reshape(-1)
        anchors = (torch.arange(self.num_classes, device=x.device).unsqueeze(1) * k + first).reshape(-1)
        radicand = (2 - torch.clamp(2 * pair_sim, max=2)).clamp(min=torch.finfo(x.dtype).tiny)
        return Terms(radicand.sqrt(), anchors, divisor=float(pair_sim.numel() * 2))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, centers_per_class={self.centers_per_class}"
