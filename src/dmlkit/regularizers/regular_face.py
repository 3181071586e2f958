from __future__ import annotations

import torch
from torch import Tensor

from .._validation import message
from ..distances import BaseDistance, CosineSimilarity
from ..reducers import BaseReducer
from ..types import Terms, empty_index
from .base import BaseRegularizer

__all__ = ["RegularFaceRegularizer"]


class RegularFaceRegularizer(BaseRegularizer):
    """Exclusive regularization (Zhao et al., 2019, "RegularFace: Deep Face Recognition via Exclusive
    Regularization", CVPR).

    Spreads the class weights (the rows ``w_i`` of ``x``) apart: row ``i`` contributes its similarity to
    the most similar other row, ``max_{j != i} s(w_i, w_j)``, and the default reducer averages over the
    rows (the paper's ``1/C sum_i max_{j != i} cos(w_i, w_j)``). The neighbour ``j`` is chosen without
    gradient; the gradient flows through the selected similarity ``s(w_i, w_j)`` only.

    With fewer than two rows there is no other class to be exclusive from, so the penalty is 0 with a zero
    gradient (pytorch-metric-learning compares a single row with itself and returns its self-similarity).

    Args:
        distance: a similarity (``is_inverted=True``); ``CosineSimilarity()`` by default.
        reducer: how the per-row penalties become a scalar; ``MeanReducer()`` by default.
        collect_stats: accepted for compatibility; statistics are not collected.

    Raises:
        ValueError: if ``distance`` is not a similarity.

    Example:
        >>> RegularFaceRegularizer()(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))
        tensor(0.4714)
    """

    default_distance = CosineSimilarity

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(distance=distance, reducer=reducer, collect_stats=collect_stats)
        if not (isinstance(self.distance, BaseDistance) and self.distance.is_inverted):
            raise ValueError(
                message(
                    type(self).__name__,
                    "distance",
                    "a similarity (is_inverted=True), e.g. CosineSimilarity()",
                    self.distance,
                )
            )

    def compute_terms(self, x: Tensor) -> Terms:
        n = x.shape[0]
        if n < 2:
            return Terms(x.new_zeros(0), empty_index(x.device))
        sim = self.distance(x)
        with torch.no_grad():
            others = sim.detach().clone()
            others.fill_diagonal_(float("-inf"))
            nearest = others.argmax(dim=1)
        values = sim.gather(1, nearest.unsqueeze(1)).squeeze(1)
        return Terms(values, torch.arange(n, device=x.device))
