from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_range
from ..types import Terms
from .base import BaseRegularizer

__all__ = ["LpRegularizer"]


class LpRegularizer(BaseRegularizer):
    """Penalises the L_p norm of each row, ``||x_i||_p ** power`` (mean over rows by default).

    Args:
        p: the norm's order, ``> 0``.
        power: exponent applied to each norm.

    Example:
        >>> LpRegularizer()(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor(3.)
    """

    def __init__(self, p: float = 2, power: float = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        check_range(type(self).__name__, "p", p, low=0, low_inclusive=False)
        check_range(type(self).__name__, "power", power)
        self.p = p
        self.power = power

    def compute_terms(self, x: Tensor) -> Terms:
        norms = torch.linalg.vector_norm(x, ord=self.p, dim=1)
        if self.power != 1:
            norms = norms**self.power
        return Terms(norms, torch.arange(x.shape[0], device=x.device))
