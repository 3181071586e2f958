from __future__ import annotations

from typing import Any

from torch import Tensor

from .._validation import message
from .base import BaseDistance

__all__ = ["DotProductSimilarity"]


class DotProductSimilarity(BaseDistance):
    """The dot product ``x . y``, a similarity (higher is closer).

    Embeddings are L2-normalised by default (``normalize_embeddings=True``), as in pytorch-metric-learning;
    pass ``normalize_embeddings=False`` for the raw inner product.

    Example:
        >>> DotProductSimilarity(normalize_embeddings=False)(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]))
        tensor([[11.]])
    """

    def __init__(self, **kwargs: Any) -> None:
        if "is_inverted" in kwargs and not kwargs["is_inverted"]:
            raise ValueError(message(type(self).__name__, "is_inverted", "True (it is a similarity)", False))
        kwargs["is_inverted"] = True
        super().__init__(**kwargs)

    def compute_mat(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        return query_emb @ ref_emb.transpose(-1, -2)

    def pairwise_distance(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        return (query_emb * ref_emb).sum(dim=1)
