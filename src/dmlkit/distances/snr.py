"""The signal-to-noise ratio distance."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import message
from .base import BaseDistance

__all__ = ["SNRDistance"]


class SNRDistance(BaseDistance):
    """Signal-to-noise ratio distance (Yuan et al., 2019, "Signal-to-Noise Ratio: A Robust Distance Metric for
    Deep Metric Learning", CVPR, arXiv:1904.02616).

    The query ``x`` is the signal and its difference to the reference ``y`` the noise:
    ``d(x, y) = Var(y - x) / Var(x)``, with the unbiased variance (divisor ``D - 1``) over the ``D`` embedding
    dimensions. It is not symmetric: ``d(x, y)`` is measured against the query's variance. Lower is closer.

    The matrix never materialises the ``(N, M, D)`` differences: after centring each row,
    ``(D - 1) Var(x - y) = |x_c|^2 + |y_c|^2 - 2 x_c . y_c``, so one matrix product gives every pair. The result
    is clamped at 0 against rounding when ``x`` and ``y`` nearly coincide. A query whose entries are all
    equal has zero variance, so its row is ``inf`` (``nan`` against an identical reference).

    Args:
        normalize_embeddings: L_p-normalise every embedding before comparing (default ``True``).
        p: the norm's order used for normalisation, ``> 0``.
        power: the matrix is raised to this power.
        is_inverted: must be ``False`` (it is a distance).
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> d = SNRDistance(normalize_embeddings=False)
        >>> d(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
        tensor([[0., 1.]])
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("is_inverted", False):
            raise ValueError(message("SNRDistance", "is_inverted", "False (it is a distance)", True))
        super().__init__(**kwargs)

    def compute_mat(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        _check_dims(query_emb)
        out_dtype = query_emb.dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            # Second moments lose too much in half precision: accumulate in float32.
            query_emb, ref_emb = query_emb.float(), ref_emb.float()
        # Centring first keeps the subtraction below free of the large mean terms.
        q = query_emb - query_emb.mean(dim=1, keepdim=True)
        r = ref_emb - ref_emb.mean(dim=1, keepdim=True)
        q_sq = (q * q).sum(dim=1)
        r_sq = (r * r).sum(dim=1)
        noise = (q_sq.unsqueeze(1) + r_sq.unsqueeze(0) - 2 * (q @ r.transpose(0, 1))).clamp(min=0)
        # The (D - 1) divisors of both variances cancel.
        return (noise / q_sq.unsqueeze(1)).to(out_dtype)

    def pairwise_distance(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        _check_dims(query_emb)
        return torch.var(query_emb - ref_emb, dim=1) / torch.var(query_emb, dim=1)


def _check_dims(emb: Tensor) -> None:
    if emb.shape[-1] < 2:
        raise ValueError(
            message(
                "SNRDistance",
                "query_emb",
                "of embedding size >= 2 (the variance over one dimension is undefined)",
                emb.shape[-1],
            )
        )
