"""faiss backends of :class:`~dmlkit.index.EmbeddingIndex` (Johnson, Douze and Jegou, 2017, arXiv:1702.08734).

``flat`` is exhaustive; ``ivf`` searches the ``nprobe`` nearest of ``nlist`` k-means cells (inverted file,
Jegou et al., 2011); ``hnsw`` walks a hierarchical navigable small-world graph (Malkov and Yashunin, 2016,
arXiv:1603.09320). faiss stores float32 vectors and the caller's int64 ids (through an ``IDMap2`` wrapper
for flat and HNSW; IVF keeps ids natively). Cosine similarity is the inner product of L2-normalised
vectors, which the caller prepares. faiss is imported when a backend is created.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.faiss_backend import import_faiss

__all__ = ["FaissBackend"]


class FaissBackend:
    """A faiss index over (vector, id) rows, rebuilt from the caller's rows when it cannot delete in place.

    HNSW graphs do not support removal: after :meth:`remove` the backend is ``stale`` and the caller
    rebuilds it from its remaining rows (:meth:`rebuild`) before the next search or save.

    Args:
        kind: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        inner_product: rank by inner product (cosine, inner product) instead of L2 distance.
        dim: vector dimension.
        nlist: IVF cells.
        hnsw_m: HNSW links per node.
        ef_construction: HNSW candidate list size while building.
        seed: seed of the IVF k-means.
    """

    def __init__(
        self, kind: str, inner_product: bool, dim: int, nlist: int, hnsw_m: int, ef_construction: int, seed: int
    ) -> None:
        self.kind = kind
        self.inner_product = inner_product
        self.dim = dim
        self.nlist, self.hnsw_m, self.ef_construction, self.seed = nlist, hnsw_m, ef_construction, seed
        self.faiss = import_faiss(f"EmbeddingIndex(backend='faiss-{kind}')")
        self.index = self._new_index()
        self.stale = False

    def _new_index(self) -> Any:
        faiss = self.faiss
        metric = faiss.METRIC_INNER_PRODUCT if self.inner_product else faiss.METRIC_L2
        if self.kind == "flat":
            return faiss.index_factory(self.dim, "IDMap2,Flat", metric)
        if self.kind == "hnsw":
            index = faiss.index_factory(self.dim, f"IDMap2,HNSW{self.hnsw_m},Flat", metric)
            faiss.downcast_index(index.index).hnsw.efConstruction = self.ef_construction
            return index
        index = faiss.index_factory(self.dim, f"IVF{self.nlist},Flat", metric)
        index.cp.seed = self.seed
        # faiss warns below 39 points per cell; the caller already requires at least one point per cell.
        index.cp.min_points_per_centroid = 1
        return index

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        """Start a new, empty IVF index trained on ``vectors`` (at least ``nlist`` rows)."""
        self.index = self._new_index()
        self.index.train(vectors)
        self.stale = False

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        if self.kind == "hnsw":
            self.stale = True
        else:
            self.index.remove_ids(ids)

    def rebuild(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Replace the index by one holding exactly these rows (an IVF index keeps its trained cells)."""
        if self.kind == "ivf":
            self.index.reset()
        else:
            self.index = self._new_index()
        if len(ids):
            self.index.add_with_ids(vectors, ids)
        self.stale = False

    def _configure(self, nprobe: int, ef_search: int) -> None:
        if self.kind == "ivf":
            self.index.nprobe = min(nprobe, self.nlist)
        elif self.kind == "hnsw":
            self.faiss.downcast_index(self.index.index).hnsw.efSearch = ef_search

    def search(self, queries: np.ndarray, k: int, nprobe: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss (values, ids): squared L2 distances or inner products; missing neighbours have id -1."""
        self._configure(nprobe, ef_search)
        values, ids = self.index.search(queries, k)
        return values, ids

    def search_radius(
        self, queries: np.ndarray, threshold: float, nprobe: int, ef_search: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw faiss range search: (lims, values, ids); ``threshold`` is a squared distance for L2."""
        self._configure(nprobe, ef_search)
        lims, values, ids = self.index.range_search(queries, threshold)
        return lims, values, ids

    def serialize(self) -> np.ndarray:
        """faiss's own byte serialisation of the index (uint8 array)."""
        return self.faiss.serialize_index(self.index)

    def deserialize(self, data: np.ndarray) -> None:
        self.index = self.faiss.deserialize_index(data)
        self.stale = False
