"""Optional faiss k-nn backend (Johnson, Douze and Jegou, 2017, arXiv:1702.08734): exact Flat or approximate IVF / HNSW.

faiss is imported only when a search runs; without it, :class:`FaissKNN` raises
:class:`~dmlkit.errors.MissingDependencyError` naming ``pip install "dmlkit[faiss]"``.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_range, message
from ..errors import MissingDependencyError

__all__ = ["FaissIndex", "FaissMetric", "FaissKNN", "import_faiss"]


class FaissIndex(str, enum.Enum):
    """faiss index family: ``FLAT`` (exhaustive), ``IVF`` (inverted lists over k-means cells), ``HNSW`` (graph)."""

    FLAT = "flat"
    IVF = "ivf"
    HNSW = "hnsw"


class FaissMetric(str, enum.Enum):
    """``L2`` (faiss reports squared distances, ascending) or ``INNER_PRODUCT`` (descending)."""

    L2 = "l2"
    INNER_PRODUCT = "inner_product"


def import_faiss(feature: str) -> Any:
    """The faiss module, or MissingDependencyError naming ``feature``."""
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu", "faiss", feature) from None
    return faiss


class FaissKNN:
    """k-nn through faiss, as a ``knn_func(query, k, reference, ref_includes_query) -> (distances, indices)``.

    With ``ref_includes_query`` the search asks for ``k + 1`` neighbours and removes each query's own row
    by index (by position when an approximate index did not return it), never by distance. faiss orders
    exactly tied neighbours arbitrarily; :class:`~dmlkit.evaluation.ExactKNN` orders them by index.

    Args:
        index: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        metric: ``"l2"`` or ``"inner_product"``.
        nlist: IVF cells, ``>= 1`` (capped by the number of references).
        nprobe: IVF cells visited per query, ``>= 1``.
        hnsw_m: HNSW neighbours per node, ``>= 2``.
        ef_search: HNSW search breadth, ``>= 1``.
        seed: seed of the IVF k-means.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> distances, indices = FaissKNN()(x, 1, x, True)
        >>> indices.flatten().tolist()
        [1, 0, 1]
    """

    def __init__(
        self,
        index: FaissIndex | str = "flat",
        metric: FaissMetric | str = "l2",
        nlist: int = 100,
        nprobe: int = 8,
        hnsw_m: int = 32,
        ef_search: int = 64,
        seed: int = 0,
    ) -> None:
        self.index = check_choice("FaissKNN", "index", index, FaissIndex)
        self.metric = check_choice("FaissKNN", "metric", metric, FaissMetric)
        check_range("FaissKNN", "nlist", nlist, low=1, integer=True)
        check_range("FaissKNN", "nprobe", nprobe, low=1, integer=True)
        check_range("FaissKNN", "hnsw_m", hnsw_m, low=2, integer=True)
        check_range("FaissKNN", "ef_search", ef_search, low=1, integer=True)
        check_range("FaissKNN", "seed", seed, integer=True)
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search, self.seed = nlist, nprobe, hnsw_m, ef_search, seed

    def _build(self, faiss: Any, data: Any) -> Any:
        dim = data.shape[1]
        inner = self.metric is FaissMetric.INNER_PRODUCT
        faiss_metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        if self.index is FaissIndex.FLAT:
            built = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
        elif self.index is FaissIndex.IVF:
            quantizer = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
            nlist = max(1, min(self.nlist, data.shape[0]))
            built = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
            built.cp.seed = self.seed
            built.cp.min_points_per_centroid = 1
            built.train(data)
            built.nprobe = min(self.nprobe, nlist)
        else:
            built = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss_metric)
            built.hnsw.efSearch = self.ef_search
        built.add(data)
        return built

    def __call__(
        self, query: Tensor, k: int, reference: Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[Tensor, Tensor]:
        faiss = import_faiss(f"FaissKNN(index={self.index.value!r})")
        check_embeddings("FaissKNN", query, "query")
        if reference is None:
            reference, ref_includes_query = query, True
        check_embeddings("FaissKNN", reference, "reference")
        check_range("FaissKNN", "k", k, low=1, integer=True)
        available = reference.shape[0] - int(ref_includes_query)
        if k > available:
            raise ValueError(message("FaissKNN", "k", f"<= the number of available references ({available})", k))
        data = reference.detach().to("cpu", torch.float32).contiguous().numpy()
        queries = query.detach().to("cpu", torch.float32).contiguous().numpy()
        built = self._build(faiss, data)
        extra = int(ref_includes_query)
        distances, indices = built.search(queries, k + extra)
        distances, indices = torch.from_numpy(distances), torch.from_numpy(indices).long()
        if extra:
            own = indices == torch.arange(query.shape[0])[:, None]
            # Drop the own row where returned, else the last column; keep the order of the rest.
            drop = torch.where(
                own.any(1), own.to(torch.uint8).argmax(1), torch.full_like(own[:, 0], k, dtype=torch.long)
            )
            keep = torch.ones_like(own).scatter_(1, drop[:, None], False)
            distances = distances[keep].view(-1, k)
            indices = indices[keep].view(-1, k)
        return distances.to(query.device), indices.to(query.device)

    def __repr__(self) -> str:
        return f"FaissKNN(index={self.index.value!r}, metric={self.metric.value!r})"
