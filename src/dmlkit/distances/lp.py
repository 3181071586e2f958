from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import message
from .base import BaseDistance

__all__ = ["LpDistance"]


class LpDistance(BaseDistance):
    """The L_p distance ``||x - y||_p`` (Euclidean for ``p=2``), optionally raised to ``power``.

    Example:
        >>> LpDistance(normalize_embeddings=False)(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))
        tensor([[5.]])
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("is_inverted", False):
            raise ValueError(message("LpDistance", "is_inverted", "False (it is a distance)", True))
        super().__init__(**kwargs)

    def compute_mat(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        if query_emb.dtype in (torch.float16, torch.bfloat16):
            # cdist has no half-precision kernel on every device; compute in float32 and cast back.
            return torch.cdist(query_emb.float(), ref_emb.float(), p=self.p).to(query_emb.dtype)
        return torch.cdist(query_emb, ref_emb, p=self.p)

    def pairwise_distance(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        return torch.linalg.vector_norm(query_emb - ref_emb, ord=self.p, dim=1)
