"""A searchable, savable collection of embeddings with ids and optional metadata."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import Described, check_choice, check_embeddings, check_range, check_type, message
from ..errors import CorruptFileError
from .exact_backend import exact_search, exact_search_radius, largest_row_norm, missing_value
from .faiss_backend import FaissBackend
from .file_format import read_container, write_container

__all__ = ["EmbeddingIndex", "IndexBackend", "IndexMetric", "SearchResult"]

_OWNER = "EmbeddingIndex"
_KIND = "embedding_index"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class IndexMetric(str, enum.Enum):
    """How an :class:`EmbeddingIndex` compares embeddings.

    ``L2`` reports Euclidean distances (smaller is closer); ``COSINE`` cosine similarities and
    ``INNER_PRODUCT`` dot products (larger is closer).
    """

    INNER_PRODUCT = "inner_product"
    COSINE = "cosine"
    L2 = "l2"


class IndexBackend(str, enum.Enum):
    """``EXACT``: exhaustive torch search, no extra dependency. ``FAISS_FLAT``: exhaustive faiss search.
    ``FAISS_IVF`` / ``FAISS_HNSW``: approximate faiss search (inverted file / graph)."""

    EXACT = "exact"
    FAISS_FLAT = "faiss-flat"
    FAISS_IVF = "faiss-ivf"
    FAISS_HNSW = "faiss-hnsw"


class SearchResult(NamedTuple):
    """Neighbours of each query, nearest first: ``distances[i, j]`` of the row with id ``ids[i, j]``.

    ``distances`` are Euclidean distances (ascending) for the ``"l2"`` metric and similarity scores
    (descending) for ``"cosine"`` and ``"inner_product"``. A missing neighbour has id -1 and the value
    ``inf`` (l2) or ``-inf`` (similarities).
    """

    distances: Tensor
    ids: Tensor


class EmbeddingIndex:
    """Embeddings with int64 ids and optional JSON metadata: k-nearest and radius search, removal, one-file save.

    The ``"exact"`` backend compares every stored row with :func:`dmlkit.evaluation.knn` (streamed blocks,
    float64 when the index or the queries are float64) and orders equal values by ascending id. The faiss
    backends (Johnson, Douze and Jegou, 2017, arXiv:1702.08734) compute in float32: ``"faiss-flat"`` is
    exhaustive; ``"faiss-ivf"`` (inverted file over ``nlist`` k-means cells, ``nprobe`` visited) and
    ``"faiss-hnsw"`` (Malkov and Yashunin, 2016, arXiv:1603.09320) are approximate. Faiss results are
    re-sorted so that ties among returned rows are also ordered by id. The index keeps its own copy of
    the rows (sorted by id) besides the faiss index, so that rows can be read back and an HNSW graph,
    which faiss cannot delete from, is rebuilt after :meth:`remove` at the next search. HNSW graphs suit
    metric comparisons (l2, cosine); for ``"inner_product"`` on unnormalised vectors their recall is poor,
    so prefer IVF there.

    Sign convention: :meth:`search` returns Euclidean distances (not squared; smaller is closer) for
    ``metric="l2"``, and similarity scores (larger is closer) for ``"cosine"`` and ``"inner_product"``;
    :attr:`higher_is_closer` tells which. ``search_radius(queries, radius)`` returns the rows at distance
    ``<= radius`` (l2) or with score ``>= radius`` (similarities); faiss's range search compares strictly
    (``<`` / ``>``), so rows exactly on the boundary may differ between backends.

    An IVF index needs training: the first :meth:`add` trains it on the added rows when there are at least
    ``nlist`` of them (call :meth:`train` on a sample to train it first instead).

    Args:
        dim: embedding dimension, ``>= 1``; None takes it from the first :meth:`add`.
        metric: ``"cosine"`` (default), ``"inner_product"`` or ``"l2"``.
        backend: ``"exact"`` (default), ``"faiss-flat"``, ``"faiss-ivf"`` or ``"faiss-hnsw"``.
        nlist: IVF cells, ``>= 1``.
        nprobe: IVF cells visited per query, ``>= 1`` (may be changed between searches).
        hnsw_m: HNSW links per node, ``>= 2``.
        ef_construction: HNSW candidates kept while inserting, ``>= 1``.
        ef_search: HNSW candidates kept while searching, ``>= 1`` (may be changed between searches).
        seed: seed of the IVF k-means.
        block_size: stored rows per block of the exact search, ``>= 1``.
        dtype: ``torch.float32`` or ``torch.float64``, the dtype rows are stored in.
        device: where the rows are stored and the exact search runs.

    Example:
        >>> index = EmbeddingIndex(metric="l2")
        >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), ids=[10, 20, 30]).tolist()
        [10, 20, 30]
        >>> index.search(torch.tensor([[0.9, 0.0]]), k=2)
        SearchResult(distances=tensor([[0.1000, 0.9000]]), ids=tensor([[20, 10]]))
        >>> len(index), index.remove([20]), len(index)
        (3, 1, 2)
    """

    def __init__(
        self,
        dim: int | None = None,
        metric: IndexMetric | str = "cosine",
        backend: IndexBackend | str = "exact",
        *,
        nlist: int = 100,
        nprobe: int = 8,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        seed: int = 0,
        block_size: int = 4096,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if dim is not None:
            check_range(_OWNER, "dim", dim, low=1, integer=True)
        self._metric = check_choice(_OWNER, "metric", metric, IndexMetric)
        self._backend = check_choice(_OWNER, "backend", backend, IndexBackend)
        check_range(_OWNER, "nlist", nlist, low=1, integer=True)
        check_range(_OWNER, "nprobe", nprobe, low=1, integer=True)
        check_range(_OWNER, "hnsw_m", hnsw_m, low=2, integer=True)
        check_range(_OWNER, "ef_construction", ef_construction, low=1, integer=True)
        check_range(_OWNER, "ef_search", ef_search, low=1, integer=True)
        check_range(_OWNER, "seed", seed, integer=True)
        check_range(_OWNER, "block_size", block_size, low=1, integer=True)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(message(_OWNER, "dtype", "torch.float32 or torch.float64", dtype))
        self.nlist, self.nprobe, self.hnsw_m = nlist, nprobe, hnsw_m
        self.ef_construction, self.ef_search, self.seed, self.block_size = ef_construction, ef_search, seed, block_size
        self.dtype = dtype
        self.device = torch.device(device)
        self._dim = dim
        self._norm_bound: Tensor | None = None
        self._embeddings = torch.empty(0, dim or 0, dtype=dtype, device=self.device)
        self._ids = torch.empty(0, dtype=torch.long, device=self.device)
        self._metadata: list[dict[str, Any]] | None = None
        self._next_id = 0
        self._faiss: FaissBackend | None = None
        if dim is not None:
            self._faiss = self._new_faiss(dim)

    # ----------------------------------------------------------------------------------------- properties

    @property
    def _embeddings(self) -> Tensor:
        return self._rows

    @_embeddings.setter
    def _embeddings(self, rows: Tensor) -> None:
        # every change of the rows drops the cached norm bound of the exact search
        self._rows, self._norm_bound = rows, None

    def _largest_norm(self) -> Tensor:
        """The largest row norm (the exact search's rounding bound), computed once per change of the rows."""
        if self._norm_bound is None:
            self._norm_bound = largest_row_norm(self._rows)
        return self._norm_bound

    @property
    def dim(self) -> int | None:
        """The embedding dimension (None until known)."""
        return self._dim

    @property
    def metric(self) -> IndexMetric:
        return self._metric

    @property
    def backend(self) -> IndexBackend:
        return self._backend

    @property
    def higher_is_closer(self) -> bool:
        """True for the similarity metrics (cosine, inner product), False for l2."""
        return self._metric is not IndexMetric.L2

    @property
    def ids(self) -> Tensor:
        """The stored ids, ascending (a copy)."""
        return self._ids.clone()

    @property
    def is_trained(self) -> bool:
        """False only for an IVF index that has not been trained yet."""
        if self._faiss is None:
            return self._backend is not IndexBackend.FAISS_IVF
        return self._faiss.is_trained

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(dim={self._dim}, metric={self._metric.value!r}, backend={self._backend.value!r}, "
            f"size={len(self)})"
        )

    def _settings(self) -> dict[str, int]:
        return {
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "seed": self.seed,
            "block_size": self.block_size,
        }

    # --------------------------------------------------------------------------------------------- input

    def _new_faiss(self, dim: int) -> FaissBackend | None:
        if self._backend is IndexBackend.EXACT:
            return None
        kind = self._backend.value.removeprefix("faiss-")
        inner = self._metric is not IndexMetric.L2
        return FaissBackend(kind, inner, dim, self.nlist, self.hnsw_m, self.ef_construction, self.seed)

    def _as_embeddings(self, value: Any, arg: str) -> Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        check_embeddings(_OWNER, value, arg)
        if self._dim is not None and value.shape[1] != self._dim:
            rule = f"of embedding size {self._dim} (the index's dimension)"
            raise ValueError(message(_OWNER, arg, rule, Described(f"embedding size {value.shape[1]}")))
        return value

    def _as_ids(self, value: Any, arg: str) -> Tensor:
        ids = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
        if ids.ndim == 1 and ids.numel() == 0:
            ids = ids.long()  # an empty list arrives as float64
        if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(
                message(_OWNER, arg, "a 1-D sequence of integers", Described(f"{ids.dtype} {tuple(ids.shape)}"))
            )
        return ids.to(device=self.device, dtype=torch.long)

    def _faiss_vectors(self, x: Tensor) -> np.ndarray:
        x = x.detach().to("cpu", torch.float32)
        if self._metric is IndexMetric.COSINE:
            x = F.normalize(x, dim=1)
        return np.ascontiguousarray(x.numpy())

    def _positions(self, ids: Tensor) -> Tensor:
        """Storage rows of ``ids`` (KeyError naming the missing ones)."""
        pos = torch.searchsorted(self._ids, ids).clamp_(max=max(len(self) - 1, 0))
        found = self._ids[pos] == ids if len(self) else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = ids[~found].unique()
            shown = ", ".join(str(i) for i in missing[:10].tolist()) + (" ..." if missing.numel() > 10 else "")
            raise KeyError(f"{_OWNER}: {missing.numel()} id(s) not in the index: {shown}.")
        return pos

    # --------------------------------------------------------------------------------------------- write

    def train(self, embeddings: Tensor | np.ndarray) -> None:
        """Train the IVF cells on ``embeddings`` (at least ``nlist`` rows) and re-add every stored row.

        The other backends need no training; for them this does nothing.
        """
        x = self._as_embeddings(embeddings, "embeddings")
        if self._backend is not IndexBackend.FAISS_IVF:
            return
        self._check_training_size(x.shape[0])
        if self._faiss is None:
            self._dim = x.shape[1]
            self._embeddings = self._embeddings.new_empty(0, self._dim)
            self._faiss = self._new_faiss(self._dim)
        assert self._faiss is not None
        self._faiss.train(self._faiss_vectors(x))
        if len(self):
            self._faiss.add(self._faiss_vectors(self._embeddings), self._ids.cpu().numpy())

    def _check_training_size(self, rows: int) -> None:
        if rows < self.nlist:
            rule = (
                f"at least nlist = {self.nlist} rows to train the IVF index "
                "(add more rows at once, call train() on a larger sample first, or lower nlist)"
            )
            raise ValueError(message(_OWNER, "embeddings", rule, Described(f"{rows} rows")))

    def add(
        self,
        embeddings: Tensor | np.ndarray,
        ids: Sequence[int] | Tensor | np.ndarray | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> Tensor:
        """Add rows; return their ids.

        Args:
            embeddings: (n, dim) floating-point rows (torch or numpy), finite.
            ids: n distinct integers ``>= 0`` not yet in the index; None numbers the rows after the largest
                id ever used.
            metadata: one JSON-serialisable dict per row (stored as JSON: it must round-trip unchanged);
                rows added without metadata get ``{}``.

        Raises:
            ValueError: wrong dimension, repeated or negative ids, ids already present, metadata of the
                wrong length, or an untrained IVF index given fewer than ``nlist`` rows. Nothing is added.
            TypeError: embeddings that are not floating point, ids that are not integers, metadata rows
                that are not JSON-serialisable dicts.
        """
        x = self._as_embeddings(embeddings, "embeddings")
        n = x.shape[0]
        if ids is None:
            new_ids = torch.arange(self._next_id, self._next_id + n, dtype=torch.long, device=self.device)
        else:
            new_ids = self._as_ids(ids, "ids")
            if new_ids.shape[0] != n:
                rule = f"of the same length as `embeddings` ({n})"
                raise ValueError(message(_OWNER, "ids", rule, Described(f"length {new_ids.shape[0]}")))
            if n and int(new_ids.min()) < 0:
                raise ValueError(message(_OWNER, "ids", "integers >= 0", int(new_ids.min())))
            unique, counts = new_ids.unique(return_counts=True)
            if bool((counts > 1).any()):
                repeated = unique[counts > 1][:10].tolist()
                raise ValueError(message(_OWNER, "ids", "distinct", Described(f"repeated ids {repeated}")))
            present = new_ids[torch.isin(new_ids, self._ids)]
            if present.numel():
                rule = "ids not already in the index"
                raise ValueError(message(_OWNER, "ids", rule, Described(f"present ids {present[:10].tolist()}")))
        rows = self._check_metadata(metadata, n)
        if self._backend is IndexBackend.FAISS_IVF and not self.is_trained:
            self._check_training_size(n)
        if n == 0:
            return new_ids
        if self._dim is None:
            self._dim = x.shape[1]
            self._embeddings = self._embeddings.new_empty(0, self._dim)
            self._faiss = self._new_faiss(self._dim)
        if self._faiss is not None:
            vectors = self._faiss_vectors(x)
            if not self._faiss.is_trained:
                self._faiss.train(vectors)
            self._faiss.add(vectors, new_ids.cpu().numpy())
        self._append(x.detach().to(device=self.device, dtype=self.dtype), new_ids, rows)
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids.clone()

    @staticmethod
    def _check_metadata(metadata: Sequence[dict[str, Any]] | None, n: int) -> list[dict[str, Any]] | None:
        if metadata is None:
            return None
        if isinstance(metadata, (dict, str, bytes)) or not isinstance(metadata, Sequence):
            raise TypeError(
                message(_OWNER, "metadata", "a sequence of dicts, one per row", Described(type(metadata).__name__))
            )
        if len(metadata) != n:
            rule = f"of the same length as `embeddings` ({n})"
            raise ValueError(message(_OWNER, "metadata", rule, Described(f"length {len(metadata)}")))
        rows = list(metadata)
        for i, row in enumerate(rows):
            check_type(_OWNER, f"metadata[{i}]", row, dict, "a dict")
            try:
                same = json.loads(json.dumps(row)) == row
            except (TypeError, ValueError) as exc:
                raise TypeError(message(_OWNER, f"metadata[{i}]", "JSON-serialisable", Described(str(exc)))) from None
            if not same:
                rule = "unchanged by a JSON round trip (string keys; lists, not tuples)"
                raise TypeError(message(_OWNER, f"metadata[{i}]", rule, row))
        return rows

    def _append(self, x: Tensor, ids: Tensor, rows: list[dict[str, Any]] | None) -> None:
        old = len(self)
        if rows is not None and self._metadata is None:
            self._metadata = [{} for _ in range(old)]
        if self._metadata is not None:
            self._metadata.extend(rows if rows is not None else ({} for _ in range(ids.shape[0])))
        embeddings = torch.cat([self._embeddings, x])
        all_ids = torch.cat([self._ids, ids])
        in_order = bool((ids[1:] > ids[:-1]).all()) and (old == 0 or int(ids[0]) > int(self._ids[-1]))
        if not in_order:
            order = all_ids.argsort()
            embeddings, all_ids = embeddings[order], all_ids[order]
            if self._metadata is not None:
                meta = self._metadata
                self._metadata = [meta[i] for i in order.tolist()]
        bound = None if self._norm_bound is None else torch.maximum(self._norm_bound, largest_row_norm(x))
        self._embeddings, self._ids = embeddings, all_ids
        self._norm_bound = bound

    def remove(self, ids: Sequence[int] | Tensor | np.ndarray) -> int:
        """Remove the rows with these ids; return how many were removed.

        Raises:
            KeyError: some id is not in the index (nothing is removed).
        """
        gone = self._as_ids(ids, "ids").unique()
        self._positions(gone)
        if gone.numel() == 0:
            return 0
        keep = ~torch.isin(self._ids, gone)
        if self._faiss is not None:
            self._faiss.remove(gone.cpu().numpy())
        self._embeddings, self._ids = self._embeddings[keep], self._ids[keep]
        if self._metadata is not None:
            self._metadata = [m for m, k in zip(self._metadata, keep.tolist(), strict=True) if k]
        return int(gone.numel())

    # ---------------------------------------------------------------------------------------------- read

    def get_embeddings(self, ids: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """The stored rows with these ids, in the order given (KeyError for unknown ids)."""
        return self._embeddings[self._positions(self._as_ids(ids, "ids"))]

    def get_metadata(self, ids: Sequence[int] | Tensor | np.ndarray) -> list[dict[str, Any]]:
        """The metadata dicts of these ids, in the order given (``{}`` for rows added without metadata)."""
        pos = self._positions(self._as_ids(ids, "ids")).tolist()
        if self._metadata is None:
            return [{} for _ in pos]
        return [self._metadata[i] for i in pos]

    def _ready_faiss(self) -> FaissBackend | None:
        if self._faiss is not None and self._faiss.stale:
            self._faiss.rebuild(self._faiss_vectors(self._embeddings), self._ids.cpu().numpy())
        return self._faiss

    def _check_queries(self, queries: Any) -> Tensor:
        return self._as_embeddings(queries, "queries")

    def search(self, queries: Tensor | np.ndarray, k: int) -> SearchResult:
        """The ``k`` nearest rows of each query: ``SearchResult(distances, ids)``, each (len(queries), k).

        Nearest first (see the class's sign convention); ties by id. When fewer than ``k`` rows are
        found (a small index, or an approximate backend), the rest is padded with id -1.
        """
        q = self._check_queries(queries)
        check_range(_OWNER, "k", k, low=1, integer=True)
        backend = self._ready_faiss()
        if backend is None or len(self) == 0:
            values, ids = exact_search(
                self._embeddings, self._ids, q, k, self._metric.value, self.block_size, self._largest_norm()
            )
            return SearchResult(values, ids)
        raw_values, raw_ids = backend.search(self._faiss_vectors(q), k, self.nprobe, self.ef_search)
        values, ids = torch.from_numpy(raw_values), torch.from_numpy(raw_ids).long()
        values = self._from_faiss_values(values, ids >= 0)
        # faiss orders equal values arbitrarily: order by id, then stably by closeness
        by_id = ids.argsort(dim=1, stable=True)
        values, ids = values.gather(1, by_id), ids.gather(1, by_id)
        key = values if self._metric is IndexMetric.L2 else -values
        order = key.argsort(dim=1, stable=True)
        return SearchResult(values.gather(1, order).to(q.device), ids.gather(1, order).to(q.device))

    def _from_faiss_values(self, values: Tensor, real: Tensor) -> Tensor:
        if self._metric is IndexMetric.L2:
            values = values.clamp(min=0).sqrt()
        return values.masked_fill(~real, missing_value(self._metric.value))

    def search_radius(self, queries: Tensor | np.ndarray, radius: float) -> list[SearchResult]:
        """Every row within ``radius`` of each query: one ``SearchResult`` of 1-D tensors per query.

        ``radius`` bounds the Euclidean distance (``<= radius``, ``radius >= 0``) for l2, and the score
        (``>= radius``) for the similarity metrics. Each result is sorted nearest first, ties by id.
        """
        q = self._check_queries(queries)
        if self._metric is IndexMetric.L2:
            check_range(_OWNER, "radius", radius, low=0)
        else:
            check_range(_OWNER, "radius", radius)
        backend = self._ready_faiss()
        if backend is None or len(self) == 0:
            rows, values, ids = exact_search_radius(
                self._embeddings, self._ids, q, float(radius), self._metric.value, self.block_size
            )
        else:
            threshold = float(radius) ** 2 if self._metric is IndexMetric.L2 else float(radius)
            lims, raw_values, raw_ids = backend.search_radius(
                self._faiss_vectors(q), threshold, self.nprobe, self.ef_search
            )
            counts_np = np.diff(lims)
            rows = torch.repeat_interleave(torch.arange(q.shape[0]), torch.from_numpy(counts_np.astype(np.int64)))
            ids = torch.from_numpy(raw_ids).long()
            values = self._from_faiss_values(torch.from_numpy(raw_values), ids >= 0)
            order = ids.argsort(stable=True)
            key = values[order] if self._metric is IndexMetric.L2 else -values[order]
            order = order[key.argsort(stable=True)]
            order = order[rows[order].argsort(stable=True)]
            rows, values, ids = rows[order], values[order], ids[order]
        counts = torch.bincount(rows.cpu(), minlength=q.shape[0]).tolist()
        values, ids = values.to(q.device), ids.to(q.device)
        return [SearchResult(v, i) for v, i in zip(values.split(counts), ids.split(counts), strict=True)]

    # ---------------------------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to one file, atomically (a failed save leaves an existing file untouched).

        The file holds a format version, the metric, dimension, backend and its settings, the rows, ids
        and metadata (and, for faiss backends, faiss's serialised index, so that a loaded approximate
        index answers exactly as the saved one), with a SHA-256 checksum.
        """
        header = {
            "kind": _KIND,
            "metric": self._metric.value,
            "dim": self._dim,
            "backend": self._backend.value,
            "settings": self._settings(),
            "dtype": "float64" if self.dtype == torch.float64 else "float32",
            "count": len(self),
            "next_id": self._next_id,
            "has_metadata": self._metadata is not None,
        }
        little = "<f8" if self.dtype == torch.float64 else "<f4"
        sections: dict[str, Any] = {
            "embeddings": np.ascontiguousarray(self._embeddings.detach().cpu().numpy().astype(little, copy=False)),
            "ids": np.ascontiguousarray(self._ids.cpu().numpy().astype("<i8", copy=False)),
        }
        if self._metadata is not None:
            sections["metadata"] = json.dumps(self._metadata).encode("utf-8")
        backend = self._ready_faiss()
        if backend is not None:
            sections["faiss"] = backend.serialize()
        return write_container(path, header, sections)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        metric: IndexMetric | str | None = None,
        dim: int | None = None,
        device: str | torch.device = "cpu",
    ) -> EmbeddingIndex:
        """Read an index written by :meth:`save`.

        Args:
            path: the file.
            metric: when given, the metric the file must have been saved with.
            dim: when given, the dimension the file must have.
            device: where to store the rows.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: a truncated or corrupt file, a wrong checksum, another format version, or a
                file that is not an index (the message names the file).
            ValueError: ``metric`` or ``dim`` differ from the file's.
            MissingDependencyError: a faiss-backed index without faiss installed.

        Example:
            >>> import tempfile, os
            >>> file = os.path.join(tempfile.mkdtemp(), "demo.index")
            >>> index = EmbeddingIndex(metric="l2")
            >>> _ = index.add(torch.eye(3)); _ = index.save(file)
            >>> EmbeddingIndex.load(file, metric="l2", dim=3)
            EmbeddingIndex(dim=3, metric='l2', backend='exact', size=3)
        """
        file = Path(path)
        header, sections = read_container(file, _KIND)
        try:
            saved_metric = IndexMetric(header["metric"])
            backend = IndexBackend(header["backend"])
            saved_dim = header["dim"]
            dtype = _DTYPES[header["dtype"]]
            count, next_id, settings = int(header["count"]), int(header["next_id"]), dict(header["settings"])
            has_metadata = bool(header["has_metadata"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptFileError(f"{file}: corrupt header (missing or invalid field {exc}).") from None
        if metric is not None:
            wanted = check_choice(f"{_OWNER}.load", "metric", metric, IndexMetric)
            if wanted is not saved_metric:
                rule = f"the metric {file} was saved with ({saved_metric.value!r})"
                raise ValueError(message(f"{_OWNER}.load", "metric", rule, wanted.value))
        if dim is not None and dim != saved_dim:
            rule = f"the dimension of the embeddings in {file} ({saved_dim})"
            raise ValueError(message(f"{_OWNER}.load", "dim", rule, dim))
        index = cls(saved_dim, saved_metric, backend, dtype=dtype, device=device, **settings)
        width = saved_dim or 0
        little = "<f8" if dtype == torch.float64 else "<f4"
        embeddings = np.frombuffer(sections.get("embeddings", b""), dtype=little)
        ids = np.frombuffer(sections.get("ids", b""), dtype="<i8")
        if embeddings.size != count * width or ids.size != count:
            raise CorruptFileError(f"{file}: corrupt (section sizes do not match {count} rows of dimension {width}).")
        index._embeddings = torch.from_numpy(embeddings.copy()).view(count, width).to(dtype=dtype, device=index.device)
        index._ids = torch.from_numpy(ids.astype(np.int64)).to(index.device)
        index._next_id = next_id
        if has_metadata:
            try:
                meta = json.loads(bytes(sections["metadata"]).decode("utf-8"))
            except (KeyError, ValueError) as exc:
                raise CorruptFileError(f"{file}: corrupt metadata ({exc}).") from None
            if not isinstance(meta, list) or len(meta) != count:
                raise CorruptFileError(f"{file}: corrupt metadata (expected a list of {count} dicts).")
            index._metadata = meta
        if index._faiss is not None:
            if "faiss" not in sections:
                raise CorruptFileError(f"{file}: corrupt (the faiss index section is missing).")
            try:
                index._faiss.deserialize(np.frombuffer(sections["faiss"], dtype=np.uint8).copy())
            except RuntimeError as exc:
                raise CorruptFileError(f"{file}: unreadable faiss index ({exc}).") from None
        return index
