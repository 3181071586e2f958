from __future__ import annotations

from typing import Any

from .._validation import message
from .dot_product import DotProductSimilarity

__all__ = ["CosineSimilarity"]


class CosineSimilarity(DotProductSimilarity):
    """Cosine similarity ``x . y / (||x|| ||y||)`` in ``[-1, 1]``; higher is closer.

    Example:
        >>> CosineSimilarity()(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 2.0]]))
        tensor([[0.7071]])
    """

    def __init__(self, **kwargs: Any) -> None:
        if not kwargs.get("normalize_embeddings", True):
            raise ValueError(
                message(
                    "CosineSimilarity",
                    "normalize_embeddings",
                    "True (use DotProductSimilarity for unnormalised inner products)",
                    False,
                )
            )
        if kwargs.get("p", 2) != 2:
            raise ValueError(message("CosineSimilarity", "p", "2", kwargs["p"]))
        kwargs["normalize_embeddings"] = True
        super().__init__(**kwargs)
