"""pytorch-metric-learning's inference API: embed with a trained model, find neighbours, decide matches.

``InferenceModel``, ``MatchFinder``, ``FaissKNN`` and ``CustomKNN`` have pytorch-metric-learning's names,
constructor parameters and methods (also importable as ``dmlkit.utils.inference``), plus :class:`IndexKNN`,
a ``knn_func`` backed by an :class:`~dmlkit.index.EmbeddingIndex` (exact torch search by default, no faiss
needed).

Differences from pytorch-metric-learning 2.9.0, each for a reason given where it applies:

* ``InferenceModel`` searches neighbours with the same measure that decides matches: without ``knn_func``
  it builds one from ``match_finder.distance`` (cosine similarity by default), where pytorch-metric-learning
  ranks by squared L2 distance while matching by cosine similarity, so that the values returned by
  ``get_nearest_neighbors`` were not comparable with the match threshold.
* ``MatchFinder.is_match`` applies the distance's normalisation and power, so that it agrees with
  ``get_matching_pairs`` on the same pairs.
* ``InferenceModel`` puts inputs on the trunk's device by default (not on CUDA whenever it exists) and
  restores the trunk's and embedder's training mode after embedding.
* ``CustomKNN`` also keeps a reference set (``train`` / ``add``), so it works inside ``InferenceModel``;
  it excludes each query's own row by index and orders equal distances by index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import Described, check_choice, check_embeddings, check_range, check_type, message
from ..distances import BaseDistance, BatchedDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from ..errors import CorruptFileError
from ..evaluation.faiss_backend import import_faiss
from .embedding_index import EmbeddingIndex, IndexBackend, IndexMetric
from .file_format import atomic_write_chunks, read_container, write_container

__all__ = ["MatchFinder", "InferenceModel", "FaissKNN", "CustomKNN", "IndexKNN", "knn_func_for_distance"]


#: little-endian file dtype -> (native numpy dtype, torch dtype)
_NUMPY_DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "<f4": (np.float32, torch.float32),
    "<f8": (np.float64, torch.float64),
}


def _as_tensor(x: Any) -> Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _drop_own_rows(distances: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """From ``k + 1`` neighbours per query, drop query ``i``'s own index ``i`` (the last column when absent)."""
    own = indices == torch.arange(indices.shape[0], device=indices.device)[:, None]
    drop = torch.where(own.any(1), own.to(torch.uint8).argmax(1), torch.full_like(own[:, 0], k, dtype=torch.long))
    keep = torch.ones_like(own).scatter_(1, drop[:, None], False)
    return distances[keep].view(-1, k), indices[keep].view(-1, k)


# --------------------------------------------------------------------------------------------- matching


def _as_threshold(value: Any) -> float:
    """A finite threshold as a Python float; numpy scalars and one-element tensors (a calibrated value) too."""
    if (isinstance(value, Tensor) and value.numel() == 1) or isinstance(value, (np.floating, np.integer)):
        value = value.item()
    check_range("MatchFinder", "threshold", value)
    if math.isinf(value):
        raise ValueError(message("MatchFinder", "threshold", "finite", value))
    return float(value)


class MatchFinder:
    """Decides "same or different" by thresholding a distance (or similarity).

    A pair matches when its distance is ``<= threshold``, or its similarity ``>= threshold`` for a
    distance with ``is_inverted`` (cosine, dot product).

    Args:
        distance: a dmlkit distance; None means ``CosineSimilarity()``.
        threshold: default threshold of :meth:`get_matching_pairs` and :meth:`is_match` (each call may
            pass its own), for example one chosen by calibration on labelled pairs.

    Example:
        >>> finder = MatchFinder(threshold=0.9)
        >>> finder.get_matching_pairs(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]), return_tuples=True)
        [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
        >>> finder.is_match(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
        False
    """

    def __init__(self, distance: BaseDistance | None = None, threshold: float | None = None) -> None:
        if distance is None:
            distance = CosineSimilarity()
        check_type("MatchFinder", "distance", distance, BaseDistance, "a dmlkit distance (e.g. CosineSimilarity())")
        self.distance = distance
        self.threshold = None if threshold is None else _as_threshold(threshold)

    def _threshold(self, threshold: float | None) -> float:
        value = self.threshold if threshold is None else threshold
        if value is None:
            raise ValueError(message("MatchFinder", "threshold", "given, to the constructor or to this call", None))
        return _as_threshold(value)

    def _matches(self, values: Tensor, threshold: float) -> Tensor:
        return values >= threshold if self.distance.is_inverted else values <= threshold

    def operate_on_emb(
        self,
        input_func: Callable[..., Any],
        query_emb: Tensor,
        ref_emb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """``input_func(query_emb, ref_emb, *args, **kwargs)`` with ``ref_emb`` defaulting to ``query_emb``."""
        return input_func(query_emb, query_emb if ref_emb is None else ref_emb, *args, **kwargs)

    def get_matching_pairs(
        self,
        query_emb: Tensor,
        ref_emb: Tensor | None = None,
        threshold: float | None = None,
        return_tuples: bool = False,
    ) -> np.ndarray | list[tuple[int, int]]:
        """Which (query, reference) pairs match: a (len(query), len(ref)) boolean numpy array, or the list of
        matching ``(query_row, ref_row)`` tuples (row-major) with ``return_tuples``. ``ref_emb`` defaults to
        ``query_emb`` (every row then matches itself)."""
        value = self._threshold(threshold)
        with torch.no_grad():
            matches = self._matches(self.operate_on_emb(self.distance, query_emb, ref_emb), value).cpu().numpy()
        if return_tuples:
            rows, cols = np.nonzero(matches)
            return list(zip(rows.tolist(), cols.tolist(), strict=True))
        return matches

    def is_match(self, x: Tensor, y: Tensor, threshold: float | None = None) -> bool | np.ndarray:
        """Whether ``x[i]`` and ``y[i]`` match, for each row ``i``: a bool for one pair, else a numpy array.

        The distance's normalisation and power apply, so the answer equals the diagonal of
        ``get_matching_pairs(x, y)`` (pytorch-metric-learning skips both here).
        """
        value = self._threshold(threshold)
        with torch.no_grad():
            d = self.distance.pairwise_distance(self.distance.maybe_normalize(x), self.distance.maybe_normalize(y))
            if self.distance.power != 1:
                d = d**self.distance.power
            out = self._matches(d, value)
        if out.numel() == 1:
            return bool(out.item())
        return out.cpu().numpy()

    def __repr__(self) -> str:
        return f"MatchFinder(distance={self.distance!r}, threshold={self.threshold!r})"


# ------------------------------------------------------------------------------------------ knn functions


class IndexKNN:
    """A stateful ``knn_func`` over an :class:`~dmlkit.index.EmbeddingIndex`: ``train`` / ``add`` store
    rows, ``knn(query, k)`` searches them, ``knn(query, k, reference, ref_includes_query)`` searches a
    given reference instead (the calling convention of pytorch-metric-learning's ``knn_func``).

    Returned values follow :class:`~dmlkit.index.EmbeddingIndex`: Euclidean distances (ascending) for
    ``"l2"``, similarities (descending) for ``"cosine"`` and ``"inner_product"``; indices are row numbers
    in the order rows were added (ids ``0, 1, ...``). With ``ref_includes_query``, each query's own row is
    excluded by index.

    Args:
        metric: ``"cosine"`` (default), ``"inner_product"`` or ``"l2"``.
        backend: ``"exact"`` (default; ties by index), ``"faiss-flat"``, ``"faiss-ivf"`` or ``"faiss-hnsw"``.
        normalize_embeddings: L2-normalise stored rows and queries first (e.g. L2 distances between unit
            vectors, as ``LpDistance()`` measures them).
        **index_options: further :class:`~dmlkit.index.EmbeddingIndex` options (``nlist``, ``nprobe``,
            ``dtype`` ...). Without ``dtype``, float64 embeddings are stored in float64, others in float32.

    Example:
        >>> knn = IndexKNN(metric="l2")
        >>> knn.train(torch.tensor([[0.0], [1.0], [3.0]]))
        >>> knn(torch.tensor([[0.8]]), 2)
        (tensor([[0.2000, 0.8000]]), tensor([[1, 0]]))
    """

    def __init__(
        self,
        metric: IndexMetric | str = "cosine",
        backend: IndexBackend | str = "exact",
        normalize_embeddings: bool = False,
        **index_options: Any,
    ) -> None:
        # a throw-away index checks the metric and the options now rather than at the first add
        self.metric = EmbeddingIndex(metric=metric, **index_options).metric
        self.backend = check_choice("IndexKNN", "backend", backend, IndexBackend)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.index_options = index_options
        self.index: EmbeddingIndex | None = None

    def _new_index(self, like: Tensor) -> EmbeddingIndex:
        # float64 embeddings are kept in float64 unless a dtype was asked for
        options = {"dtype": torch.float64 if like.dtype == torch.float64 else torch.float32, **self.index_options}
        return EmbeddingIndex(metric=self.metric, backend=self.backend, **options)

    def _prepare(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        check_embeddings("IndexKNN", x)
        return F.normalize(x, dim=1) if self.normalize_embeddings else x

    def train(self, embeddings: Tensor | np.ndarray) -> None:
        """Replace the stored rows by ``embeddings``."""
        x = self._prepare(embeddings)
        index = self._new_index(x)
        index.add(x)
        self.index = index

    def add(self, embeddings: Tensor | np.ndarray) -> None:
        """Append rows to the stored ones."""
        x = self._prepare(embeddings)
        if self.index is None:
            self.index = self._new_index(x)
        self.index.add(x)

    def reset(self) -> None:
        self.index = None

    def __call__(
        self, query: Tensor, k: int, reference: Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[Tensor, Tensor]:
        q = self._prepare(query)
        check_range("IndexKNN", "k", k, low=1, integer=True)
        if reference is None:
            if self.index is None or len(self.index) == 0:
                raise ValueError(message("IndexKNN", "reference", "given, or rows stored with train()/add()", None))
            index = self.index
        else:
            ref = self._prepare(reference)
            index = self._new_index(ref)
            index.add(ref)
        extra = int(ref_includes_query)
        distances, ids = index.search(q, k + extra)
        if extra:
            distances, ids = _drop_own_rows(distances, ids, k)
        return distances, ids

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Save the stored rows as an :class:`~dmlkit.index.EmbeddingIndex` file (atomically)."""
        if self.index is None:
            raise ValueError(message("IndexKNN", "index", "built with train() or add() before saving", None))
        self.index.save(filename)

    def load(self, filename: str | os.PathLike[str]) -> None:
        """Load rows saved by :meth:`save`; the file's metric must be this object's."""
        self.index = EmbeddingIndex.load(filename, metric=self.metric)

    def __repr__(self) -> str:
        return f"IndexKNN(metric={self.metric.value!r}, backend={self.backend.value!r})"


class FaissKNN:
    """pytorch-metric-learning's faiss ``knn_func`` (Johnson, Douze and Jegou, 2017, arXiv:1702.08734).

    ``knn(query, k, reference=None, ref_includes_query=False)`` searches ``self.index`` after adding
    ``reference`` to it; ``reset_before`` starts each call from a new ``index_init_fn(dim)`` index and
    ``reset_after`` drops it afterwards (so a plain call searches only ``reference``). With both False,
    :meth:`train` / :meth:`add` fill a persistent index, as ``InferenceModel`` uses it. Values are
    faiss's: squared L2 distances for the default ``IndexFlatL2``; missing neighbours (``k`` larger than
    the index) have index -1, as in faiss. With ``ref_includes_query``, each query's own row is removed
    by index (the last column where it was not returned). :meth:`save` writes faiss's own file format
    (atomically), so files are interchangeable with ``faiss.write_index`` / ``faiss.read_index``.
    Searches run on the CPU; ``gpus`` is checked and kept for compatibility.

    Args:
        reset_before: build a new index at each call.
        reset_after: drop the index after each call.
        index_init_fn: ``dim -> faiss index``; None means ``faiss.IndexFlatL2``. An index that needs
            training (IVF) is trained on the first rows added.
        gpus: a non-empty list of GPU ids, or None.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> distances, indices = FaissKNN()(x, 1, x, True)
        >>> indices.flatten().tolist(), distances.flatten().tolist()
        ([1, 0, 1], [1.0, 1.0, 4.0])
    """

    def __init__(
        self,
        reset_before: bool = True,
        reset_after: bool = True,
        index_init_fn: Callable[[int], Any] | None = None,
        gpus: Sequence[int] | None = None,
    ) -> None:
        if gpus is not None:
            if not isinstance(gpus, (list, tuple)):
                raise TypeError(
                    message("FaissKNN", "gpus", "a list or tuple of GPU ids", Described(type(gpus).__name__))
                )
            if len(gpus) < 1:
                raise ValueError(message("FaissKNN", "gpus", "a non-empty list", gpus))
        self.reset_before = reset_before
        self.reset_after = reset_after
        self.index_init_fn = index_init_fn
        self.gpus = gpus
        self.index: Any = None

    def _new_index(self, dim: int) -> Any:
        faiss = import_faiss("FaissKNN")
        return faiss.IndexFlatL2(dim) if self.index_init_fn is None else self.index_init_fn(dim)

    @staticmethod
    def _rows(x: Any) -> np.ndarray:
        x = _as_tensor(x)
        check_embeddings("FaissKNN", x)
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())

    def _add_rows(self, rows: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(rows)
        self.index.add(rows)

    def __call__(
        self, query: Tensor, k: int, reference: Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[Tensor, Tensor]:
        queries = self._rows(query)
        check_range("FaissKNN", "k", k, low=1, integer=True)
        extra = int(ref_includes_query)
        if self.reset_before:
            self.index = self._new_index(queries.shape[1])
        if self.index is None:
            raise ValueError(message("FaissKNN", "index", "built (call train() or pass a reference)", None))
        if reference is not None:
            self._add_rows(self._rows(reference))
        raw_distances, raw_indices = self.index.search(queries, k + extra)
        if self.reset_after:
            self.reset()
        distances = torch.from_numpy(raw_distances).to(query.device)
        indices = torch.from_numpy(raw_indices).long().to(query.device)
        if extra:
            distances, indices = _drop_own_rows(distances, indices, k)
        return distances, indices

    def train(self, embeddings: Tensor | np.ndarray) -> None:
        """Start a new index holding ``embeddings``."""
        rows = self._rows(embeddings)
        self.index = self._new_index(rows.shape[1])
        self._add_rows(rows)

    def add(self, embeddings: Tensor | np.ndarray) -> None:
        """Append rows to the index (a new one when there is none)."""
        rows = self._rows(embeddings)
        if self.index is None:
            self.index = self._new_index(rows.shape[1])
        self._add_rows(rows)

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Write the index in faiss's format, atomically."""
        if self.index is None:
            raise ValueError(message("FaissKNN", "index", "built with train() or add() before saving", None))
        faiss = import_faiss("FaissKNN.save")
        atomic_write_chunks(filename, [faiss.serialize_index(self.index)])

    def load(self, filename: str | os.PathLike[str]) -> None:
        """Read an index written by :meth:`save` or ``faiss.write_index``."""
        faiss = import_faiss("FaissKNN.load")
        file = Path(filename)
        data = np.frombuffer(file.read_bytes(), dtype=np.uint8).copy()
        try:
            self.index = faiss.deserialize_index(data)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorruptFileError(f"{file}: not a readable faiss index (truncated or corrupt): {first}") from None

    def reset(self) -> None:
        self.index = None

    def __repr__(self) -> str:
        return f"FaissKNN(reset_before={self.reset_before}, reset_after={self.reset_after})"


def _top_k(mat: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Per row, the ``k`` best entries (largest or smallest), best first, equal values by column."""
    key = -mat if largest else mat
    vals, cols = key.topk(k, dim=1, largest=False, sorted=True)
    kth = vals[:, -1:]
    # topk picks arbitrarily among entries equal to the k-th: re-select those rows with a stable sort
    ambiguous = (key == kth).sum(1) > (vals == kth).sum(1)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        cols[rows] = key[rows].sort(dim=1, stable=True).indices[:, :k]
    # equal values inside the selection: by column, then stably by value
    by_col = cols.sort(dim=1).indices
    cols = cols.gather(1, by_col)
    cols = cols.gather(1, key.gather(1, cols).sort(dim=1, stable=True).indices)
    return mat.gather(1, cols), cols


class CustomKNN:
    """Exact k-nn by any dmlkit distance, as a ``knn_func`` (pytorch-metric-learning's ``CustomKNN``).

    ``knn(query, k, reference, ref_includes_query=False)`` ranks the reference rows by ``distance``
    (largest first for similarities), ``batch_size`` query rows at a time when given. Equal values are
    ordered by reference index and, with ``ref_includes_query``, query ``i``'s own row ``i`` is excluded by
    index. Beyond pytorch-metric-learning, :meth:`train` / :meth:`add` keep a reference set that a call
    without ``reference`` searches, so it also serves as ``InferenceModel``'s ``knn_func``.

    Args:
        distance: a dmlkit distance (a ``BatchedDistance`` is accepted for its distance; ``batch_size`` sets
            the blocks here).
        batch_size: query rows per block, ``>= 1``; None computes the whole matrix at once.

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> CustomKNN(LpDistance(normalize_embeddings=False))(x, 1, x, True)
        (tensor([[1.],
                [1.],
                [2.]]), tensor([[1],
                [0],
                [1]]))
    """

    def __init__(self, distance: BaseDistance | BatchedDistance, batch_size: int | None = None) -> None:
        if isinstance(distance, BatchedDistance):  # accepted, as by pytorch-metric-learning: its distance is used
            distance = distance.distance
        check_type("CustomKNN", "distance", distance, BaseDistance, "a dmlkit distance (e.g. LpDistance())")
        if batch_size:
            check_range("CustomKNN", "batch_size", batch_size, low=1, integer=True)
        self.distance = distance
        self.batch_size = batch_size or None
        self.reference: Tensor | None = None

    def train(self, embeddings: Tensor | np.ndarray) -> None:
        """Replace the stored reference rows."""
        x = _as_tensor(embeddings)
        check_embeddings("CustomKNN", x)
        self.reference = x.detach().clone()

    def add(self, embeddings: Tensor | np.ndarray) -> None:
        """Append reference rows."""
        x = _as_tensor(embeddings)
        check_embeddings("CustomKNN", x)
        self.reference = x.detach().clone() if self.reference is None else torch.cat([self.reference, x.detach()])

    def reset(self) -> None:
        self.reference = None

    def __call__(
        self, query: Tensor, k: int, reference: Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[Tensor, Tensor]:
        check_embeddings("CustomKNN", query, "query")
        if reference is None:
            if self.reference is None:
                raise ValueError(message("CustomKNN", "reference", "given, or rows stored with train()/add()", None))
            reference = self.reference.to(query.device)
        check_embeddings("CustomKNN", reference, "reference")
        if ref_includes_query and reference.shape[0] < query.shape[0]:
            rule = f"at least len(query) = {query.shape[0]} rows when ref_includes_query"
            raise ValueError(message("CustomKNN", "reference", rule, Described(f"{reference.shape[0]} rows")))
        available = reference.shape[0] - int(ref_includes_query)
        check_range("CustomKNN", "k", k, low=1, high=available, integer=True)
        largest = self.distance.is_inverted
        step = self.batch_size or max(query.shape[0], 1)
        distances, indices = [], []
        with torch.no_grad():
            for start in range(0, query.shape[0], step):
                mat = self.distance(query[start : start + step], reference)
                if ref_includes_query:
                    own = torch.arange(start, start + mat.shape[0], device=mat.device)
                    mat[own - start, own] = float("-inf") if largest else float("inf")
                d, i = _top_k(mat, k, largest)
                distances.append(d)
                indices.append(i)
        if not distances:
            empty = query.new_empty(0, k)
            return empty, torch.empty(0, k, dtype=torch.long, device=query.device)
        return torch.cat(distances), torch.cat(indices)

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Save the stored reference rows (atomically, checksummed); the distance is not saved."""
        if self.reference is None:
            raise ValueError(message("CustomKNN", "reference", "stored with train() or add() before saving", None))
        ref = self.reference.detach().cpu()
        little = "<f8" if ref.dtype == torch.float64 else "<f4"
        rows = np.ascontiguousarray(ref.to(_NUMPY_DTYPES[little][1]).numpy().astype(little, copy=False))
        header = {"kind": "custom_knn", "shape": list(ref.shape), "dtype": little}
        write_container(filename, header, {"reference": rows})

    def load(self, filename: str | os.PathLike[str]) -> None:
        """Read reference rows written by :meth:`save`."""
        file = Path(filename)
        header, sections = read_container(file, "custom_knn")
        try:
            shape = tuple(int(s) for s in header["shape"])
            native, _ = _NUMPY_DTYPES[header["dtype"]]
            rows = np.frombuffer(sections["reference"], dtype=header["dtype"]).reshape(shape)
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptFileError(f"{file}: corrupt reference section ({exc}).") from None
        self.reference = torch.from_numpy(rows.astype(native, copy=True))

    def __repr__(self) -> str:
        return f"CustomKNN(distance={self.distance!r}, batch_size={self.batch_size})"


def knn_func_for_distance(distance: BaseDistance) -> IndexKNN | CustomKNN:
    """A stateful ``knn_func`` that ranks and reports by ``distance``.

    Cosine similarity, dot products and Euclidean distances (``p=2``, ``power=1``) map to an exact
    :class:`IndexKNN` (streamed search, ties by index); any other distance to a :class:`CustomKNN`.

    Example:
        >>> from dmlkit.distances import CosineSimilarity, LpDistance
        >>> knn_func_for_distance(CosineSimilarity())
        IndexKNN(metric='cosine', backend='exact')
        >>> type(knn_func_for_distance(LpDistance(p=1))).__name__
        'CustomKNN'
    """
    if distance.power == 1:
        if isinstance(distance, DotProductSimilarity):
            if distance.normalize_embeddings:
                return IndexKNN(metric="cosine")
            return IndexKNN(metric="inner_product")
        if type(distance) is LpDistance and distance.p == 2:
            return IndexKNN(metric="l2", normalize_embeddings=distance.normalize_embeddings)
    return CustomKNN(distance)


# -------------------------------------------------------------------------------------------- the model


class InferenceModel:
    """Embeds inputs with a trained ``trunk`` (and ``embedder``), finds nearest neighbours, decides matches.

    ``train_knn(inputs)`` embeds and stores a reference set in ``knn_func``; ``get_nearest_neighbors(query,
    k)`` returns ``(distances, indices)`` into it; ``get_matches`` / ``is_match`` threshold the
    ``match_finder``'s distance. Inputs are tensors, lists of tensors, or (for ``train_knn`` /
    ``add_to_knn``) datasets whose items are ``(input, ...)`` tuples or inputs.

    Unlike pytorch-metric-learning (its issue 430), the default ``knn_func`` uses the match finder's
    measure: with the default ``MatchFinder`` (cosine similarity, threshold 0.9), ``get_nearest_neighbors``
    returns cosine similarities, largest first, directly comparable with the threshold, where
    pytorch-metric-learning returns squared L2 distances. Pass ``knn_func=FaissKNN(reset_before=False,
    reset_after=False)`` for its behaviour. Inputs go to ``data_device``, by default the trunk's device
    (pytorch-metric-learning picks CUDA whenever it exists); the modules' training modes are restored
    after embedding.

    Args:
        trunk: the model, ``nn.Module``.
        embedder: applied to the trunk's output; None means identity.
        match_finder: a :class:`MatchFinder`; None means ``MatchFinder(CosineSimilarity(), threshold=0.9)``.
        normalize_embeddings: L2-normalise embeddings.
        knn_func: a stateful knn function (``train``, ``add``, ``__call__(query, k)``, ``save``, ``load``);
            None derives one from ``match_finder.distance`` (:func:`knn_func_for_distance`).
        data_device: device for tensor inputs; None means the trunk's (CPU for a trunk without parameters).
        dtype: dtype for tensor inputs; None keeps theirs.

    Example:
        >>> model = InferenceModel(torch.nn.Identity())
        >>> model.train_knn(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        >>> scores, indices = model.get_nearest_neighbors(torch.tensor([[2.0, 0.1]]), k=2)
        >>> indices.tolist(), model.is_match(torch.tensor([[2.0, 0.1]]), torch.tensor([[1.0, 0.0]]))
        ([[0, 2]], True)
    """

    def __init__(
        self,
        trunk: nn.Module,
        embedder: nn.Module | None = None,
        match_finder: MatchFinder | None = None,
        normalize_embeddings: bool = True,
        knn_func: Any = None,
        data_device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.trunk = trunk
        self.embedder = nn.Identity() if embedder is None else embedder
        self.match_finder = (
            MatchFinder(distance=CosineSimilarity(), threshold=0.9) if match_finder is None else match_finder
        )
        self.knn_func = knn_func_for_distance(self.match_finder.distance) if knn_func is None else knn_func
        self.normalize_embeddings = normalize_embeddings
        if data_device is None:
            first = next(iter([*trunk.parameters(), *trunk.buffers()]), None)
            data_device = first.device if first is not None else torch.device("cpu")
        self.data_device = torch.device(data_device)
        self.dtype = dtype

    def process_if_list(self, x: Any) -> Any:
        """A list of tensors becomes one stacked tensor; anything else is returned as is."""
        if isinstance(x, list) and x and all(isinstance(item, Tensor) for item in x):
            return torch.stack(x)
        return x

    def get_embeddings(self, x: Any) -> Tensor:
        """Embeddings of a batch ``x`` (no gradient; normalised when ``normalize_embeddings``)."""
        x = self.process_if_list(x)
        if isinstance(x, Tensor):
            x = x.to(self.data_device)
            if self.dtype is not None:
                x = x.to(self.dtype)
        modes = [(m, m.training) for m in (self.trunk, self.embedder)]
        self.trunk.eval()
        self.embedder.eval()
        try:
            with torch.no_grad():
                emb = self.embedder(self.trunk(x))
        finally:
            for module, training in modes:
                module.train(training)
        if self.normalize_embeddings:
            emb = F.normalize(emb, p=2, dim=1)
        return emb

    def get_embeddings_from_tensor_or_dataset(self, inputs: Any, batch_size: int) -> Tensor:
        """Embeddings of a tensor, a list of tensors or a dataset, ``batch_size`` inputs at a time."""
        check_range("InferenceModel", "batch_size", batch_size, low=1, integer=True)
        inputs = self.process_if_list(inputs)
        parts = []
        if isinstance(inputs, (Tensor, list)):
            for start in range(0, len(inputs), batch_size):
                parts.append(self.get_embeddings(inputs[start : start + batch_size]))
        elif isinstance(inputs, torch.utils.data.Dataset):
            for batch in torch.utils.data.DataLoader(inputs, batch_size=batch_size):
                parts.append(self.get_embeddings(batch[0] if isinstance(batch, (tuple, list)) else batch))
        else:
            raise TypeError(
                message(
                    "InferenceModel",
                    "inputs",
                    "a tensor, a list of tensors or a torch Dataset",
                    Described(type(inputs).__name__),
                )
            )
        if not parts:
            raise ValueError(message("InferenceModel", "inputs", "non-empty", Described("no inputs")))
        return torch.cat(parts)

    def call_knn(self, func: Callable[[Tensor], Any], inputs: Any, batch_size: int) -> None:
        func(self.get_embeddings_from_tensor_or_dataset(inputs, batch_size))

    def train_knn(self, inputs: Any, batch_size: int = 64) -> None:
        """Embed ``inputs`` and make them ``knn_func``'s reference set (replacing any previous one)."""
        self.call_knn(self.knn_func.train, inputs, batch_size)

    def add_to_knn(self, inputs: Any, batch_size: int = 64) -> None:
        """Embed ``inputs`` and append them to ``knn_func``'s reference set."""
        self.call_knn(self.knn_func.add, inputs, batch_size)

    def get_nearest_neighbors(self, query: Any, k: int) -> tuple[Tensor, Tensor]:
        """``(distances, indices)`` of the ``k`` nearest reference rows of each query."""
        return self.knn_func(self.get_embeddings(query), k)

    def get_matches(
        self, query: Any, ref: Any = None, threshold: float | None = None, return_tuples: bool = False
    ) -> np.ndarray | list[tuple[int, int]]:
        """``match_finder.get_matching_pairs`` of the embeddings of ``query`` and ``ref`` (default ``query``)."""
        query_emb = self.get_embeddings(query)
        ref_emb = query_emb if ref is None else self.get_embeddings(ref)
        return self.match_finder.get_matching_pairs(query_emb, ref_emb, threshold, return_tuples)

    def is_match(self, x: Any, y: Any, threshold: float | None = None) -> bool | np.ndarray:
        """Whether the embeddings of ``x[i]`` and ``y[i]`` match, for each row ``i``."""
        return self.match_finder.is_match(self.get_embeddings(x), self.get_embeddings(y), threshold)

    def save_knn_func(self, filename: str | os.PathLike[str]) -> None:
        self.knn_func.save(filename)

    def load_knn_func(self, filename: str | os.PathLike[str]) -> None:
        self.knn_func.load(filename)
