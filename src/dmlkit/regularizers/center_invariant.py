from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._validation import message
from ..distances import BaseDistance, LpDistance
from ..reducers import BaseReducer
from ..types import Terms
from .base import BaseRegularizer

__all__ = ["CenterInvariantRegularizer"]


class CenterInvariantRegularizer(BaseRegularizer):
    """Center invariant regularizer (Wu et al., 2017, "Deep Face Recognition with Center Invariant Loss",
    ACM MM Thematic Workshops).

    Pushes every class centre (a row ``w_i`` of ``x``) towards the same squared norm, so that classes
    with many training samples do not dominate the feature space through larger centres. Row ``i``
    contributes ``(||w_i||^2 - mean_j ||w_j||^2)^2 / 4``; the default reducer averages over the rows.

    The norm is the distance's ``get_norm`` (L2 unless the distance's ``p`` says otherwise).

    Args:
        distance: must be an ``LpDistance`` with ``power=1`` and ``normalize_embeddings=False`` (the default),
            since the penalty is on the raw, unnormalised centres.
        reducer: how the per-row penalties become a scalar; ``MeanReducer()`` by default.
        collect_stats: accepted for compatibility; statistics are not collected.

    Raises:
        ValueError: if ``distance`` is not such an ``LpDistance``.

    Example:
        >>> CenterInvariantRegularizer()(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        tensor(4.)
    """

    default_distance = functools.partial(LpDistance, normalize_embeddings=False)

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(distance=distance, reducer=reducer, collect_stats=collect_stats)
        d = self.distance
        if not (isinstance(d, LpDistance) and d.power == 1 and not d.normalize_embeddings):
            raise ValueError(
                message(type(self).__name__, "distance", "an LpDistance(power=1, normalize_embeddings=False)", d)
            )

    def compute_terms(self, x: Tensor) -> Terms:
        squared_norms = self.distance.get_norm(x) ** 2
        deviations = squared_norms - squared_norms.mean()
        return Terms(deviations**2 / 4, torch.arange(x.shape[0], device=x.device))
