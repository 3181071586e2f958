from __future__ import annotations

import torch
from torch import Tensor

from ..types import Terms
from .base import BaseRegularizer

__all__ = ["ZeroMeanRegularizer"]


class ZeroMeanRegularizer(BaseRegularizer):
    """Zero-mean regularizer (Yuan et al., 2019, "Signal-to-Noise Ratio: A Robust Distance Metric for Deep
    Metric Learning", CVPR, arXiv:1904.02616).

    Row ``x_i`` contributes ``|sum_j x_ij|``, which is zero when the components of the embedding average to
    zero; the SNR distance assumes such zero-mean embeddings. The default reducer averages over the rows.

    Args:
        distance: unused; accepted for a uniform constructor.
        reducer: how the per-row penalties become a scalar; ``MeanReducer()`` by default.
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> ZeroMeanRegularizer()(torch.tensor([[1.0, -1.0], [2.0, 2.0]]))
        tensor(2.)
    """

    def compute_terms(self, x: Tensor) -> Terms:
        return Terms(x.sum(dim=1).abs(), torch.arange(x.shape[0], device=x.device))
