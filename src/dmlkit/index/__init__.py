"""Searchable embedding indexes and inference helpers (layer 4).

:class:`EmbeddingIndex` stores embeddings with ids and metadata, searches them exactly in torch or
approximately with faiss, and saves them to one checksummed file. :mod:`dmlkit.index.inference` holds
pytorch-metric-learning's inference API (``InferenceModel``, ``MatchFinder``, ``FaissKNN``, ``CustomKNN``),
also importable from ``dmlkit.utils.inference``. Importing this package costs torch only: faiss is imported
when a faiss backend is used.
"""

from __future__ import annotations

from .embedding_index import EmbeddingIndex, IndexBackend, IndexMetric, SearchResult
from .inference import CustomKNN, IndexKNN, InferenceModel, MatchFinder, knn_func_for_distance
from .near_duplicates import DuplicateBackend, find_near_duplicates

# pytorch-metric-learning's FaissKNN stays in dmlkit.index.inference (and dmlkit.utils.inference): its
# constructor differs from dmlkit.evaluation.FaissKNN's, and one package should not export both.
__all__ = [
    "EmbeddingIndex",
    "IndexBackend",
    "IndexMetric",
    "SearchResult",
    "IndexKNN",
    "InferenceModel",
    "MatchFinder",
    "CustomKNN",
    "knn_func_for_distance",
    "find_near_duplicates",
    "DuplicateBackend",
]
