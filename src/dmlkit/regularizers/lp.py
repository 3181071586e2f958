from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import BaseDistance
from ..reducers import BaseReducer
from ..types import Terms
from .base import BaseRegularizer

__all__ = ["LpRegularizer"]


class LpRegularizer(BaseRegularizer):
    """Penalises the L_p norm of each row, ``||x_i||_p ** power`` (mean over rows by default).

    With ``p=2, power=2`` it is the classic weight decay / L2 penalty on embeddings, which keeps their norms
    from growing without bound under unnormalised distances.

    Args:
        p: the norm's order, ``> 0`` (``float("inf")`` for the max norm).
        power: exponent applied to each norm.
        distance: unused; accepted for a uniform constructor.
        reducer: how the per-row penalties become a scalar; ``MeanReducer()`` by default.
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> LpRegularizer()(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor(3.)
        >>> LpRegularizer(p=1, power=2)(torch.tensor([[3.0, -4.0], [0.0, 1.0]]))
        tensor(25.)
    """

    def __init__(
        self,
        p: float = 2,
        power: float = 1,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(distance=distance, reducer=reducer, collect_stats=collect_stats)
        check_range(type(self).__name__, "p", p, low=0, low_inclusive=False)
        check_range(type(self).__name__, "power", power)
        self.p = p
        self.power = power

    def compute_terms(self, x: Tensor) -> Terms:
        norms = torch.linalg.vector_norm(x, ord=self.p, dim=1)
        if self.power != 1:
            norms = norms**self.power
        return Terms(norms, torch.arange(x.shape[0], device=x.device))

    def extra_repr(self) -> str:
        return f"p={self.p}, power={self.power}"
