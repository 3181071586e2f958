"""``AccuracyCalculator``: pytorch-metric-learning's evaluation API over an exact, streamed k-nn search.

Retrieval metrics follow Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check",
arXiv:2003.08505; clustering metrics (NMI, AMI) follow Vinh, Epps and Bailey, 2010 (JMLR 11);
Recall@K is the hit rate of Jegou, Douze and Schmid, 2011 (TPAMI 33), as used by Oh Song et al., 2016,
arXiv:1511.06452.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import Described, all_finite, is_real_number, message
from .clustering import KMeans, adjusted_mutual_info, normalized_mutual_info
from .knn import ExactKNN, _iter_checked

__all__ = ["AccuracyCalculator"]

_OWNER = "AccuracyCalculator"
#: metrics read from the neighbours, in the order their values are stored per query.
_KNN_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
)
_AT_K_METRICS = ("precision_at_k", "recall_at_k")
_CLUSTER_METRICS = ("NMI", "AMI")
#: queries whose per-query values are computed together from a materialised neighbour table.
_ROWS = 1024

LabelComparison = Callable[[Tensor, Tensor], Tensor]


def _as_tensor(x: Any, arg: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(message(_OWNER, arg, "a torch.Tensor or numpy.ndarray", type(x).__name__))


def _prepare_embeddings(x: Any, arg: str, device: torch.device) -> Tensor:
    x = _as_tensor(x, arg).to(device)
    if x.ndim != 2:
        raise ValueError(message(_OWNER, arg, "2-D of shape (N, embedding_size)", tuple(x.shape)))
    if not x.is_floating_point():
        x = x.float()
    if x.numel() and not all_finite(x):
        raise ValueError(message(_OWNER, arg, "finite (no NaN or Inf)", "a tensor with NaN or Inf"))
    return x.detach()


def _prepare_labels(y: Any, arg: str, size: int, emb_arg: str, device: torch.device) -> Tensor:
    y = _as_tensor(y, arg).to(device)
    if y.ndim not in (1, 2):
        raise ValueError(message(_OWNER, arg, "1-D, or 2-D of shape (N, label_size)", tuple(y.shape)))
    if y.shape[0] != size:
        raise ValueError(message(_OWNER, arg, f"of the same length as `{emb_arg}` ({size})", f"length {y.shape[0]}"))
    return y


def _row_codes(query_labels: Tensor, reference_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Consecutive codes of label values (rows for 2-D labels), in sorted label order, shared by both sets."""
    q = query_labels.reshape(query_labels.shape[0], -1)
    r = reference_labels.reshape(reference_labels.shape[0], -1).to(q.dtype)
    both = torch.cat([q, r])
    codes = (
        torch.unique(both, dim=0, return_inverse=True)[1]
        if q.shape[1] > 1
        else torch.unique(both[:, 0], return_inverse=True)[1]
    )
    return codes[: q.shape[0]], codes[q.shape[0] :]


def _per_query(
    same: Tensor, num_relevant: Tensor, limit: int, names: Sequence[str], at_k: Sequence[int]
) -> dict[str, Tensor]:
    """Per-query values of the requested metrics from ``same`` (n, D): neighbour i shares the query's label.

    ``limit`` is the list length the metrics read (pytorch-metric-learning's ``k``); ``same`` holds at
    least the columns they need. Every value is float64.
    """
    out: dict[str, Tensor] = {}
    n = same.shape[0]
    r_lim = num_relevant.clamp(max=limit)
    denom_r = num_relevant.clamp(min=1).to(torch.float64)
    if "precision_at_1" in names:
        out["precision_at_1"] = same[:, 0].to(torch.float64)
    if "r_precision" in names or "mean_average_precision_at_r" in names:
        width = min(int(r_lim.max()) if n else 0, same.shape[1])
        rel = same[:, :width] & (torch.arange(width, device=same.device) < r_lim[:, None])
        if "r_precision" in names:
            out["r_precision"] = rel.sum(1).to(torch.float64) / r_lim.clamp(min=1).to(torch.float64)
        if "mean_average_precision_at_r" in names:
            out["mean_average_precision_at_r"] = _average_precision_sum(rel) / denom_r
    if "mean_average_precision" in names or "mean_reciprocal_rank" in names:
        rel = same[:, :limit]
        if "mean_average_precision" in names:
            out["mean_average_precision"] = _average_precision_sum(rel) / denom_r
        if "mean_reciprocal_rank" in names:
            found = rel.any(1)
            first = rel.to(torch.uint8).argmax(1).to(torch.float64) + 1
            out["mean_reciprocal_rank"] = torch.where(found, 1 / first, torch.zeros_like(first))
    for k in at_k:
        top = same[:, :k]
        if "precision_at_k" in names:
            out[f"precision_at_{k}"] = top.sum(1).to(torch.float64) / k
        if "recall_at_k" in names:
            out[f"recall_at_{k}"] = top.any(1).to(torch.float64)
    return out


def _average_precision_sum(rel: Tensor) -> Tensor:
    """``sum_i rel_i * precision@i`` per row of a boolean relevance table."""
    inverse_ranks = 1 / torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    # hits so far at each relevant position, divided by the rank and summed: one matrix-vector product
    return (rel.cumsum(1) * rel).to(torch.float64) @ inverse_ranks


def _one_label_per_query(query_labels: Tensor) -> Tensor:
    """The labels as one column: NMI and AMI compare one cluster with one class per query."""
    if query_labels.ndim == 2 and query_labels.shape[1] != 1:
        rule = "1-D (or one column) for NMI and AMI, which compare one class per query with its cluster"
        raise ValueError(message(_OWNER, "query_labels", rule, Described(f"shape {tuple(query_labels.shape)}")))
    return query_labels.flatten()


class AccuracyCalculator:
    """Retrieval and clustering accuracy, with pytorch-metric-learning's constructor, call and metric keys.

    ``get_accuracy`` returns ``precision_at_1``, ``r_precision``, ``mean_average_precision_at_r``,
    ``mean_average_precision``, ``mean_reciprocal_rank``, ``NMI`` and ``AMI`` (Musgrave et al., 2020,
    arXiv:2003.08505; Vinh et al., 2010), plus ``precision_at_{k}`` and ``recall_at_{k}`` for each ``k`` of
    ``at_k``. For a query with label ``y``, ``R`` is the number of references that match ``y`` (itself
    excluded when the reference set includes the queries); queries with ``R = 0`` ("lone") are left out
    of every retrieval metric, and a metric is NaN when every query is lone.

    With the default ``knn_func`` (:class:`~dmlkit.evaluation.ExactKNN`) the neighbours are found by an
    exact streamed search and reduced to per-query values block by block: memory is
    ``O(Nq + 256 * (depth + block_size))``, never ``Nq x Nr`` (a float32 set searched against itself on the
    CPU with numba installed computes each pair once and holds up to about ``N * depth`` int64 hits, at most
    1 GiB; see :func:`~dmlkit.evaluation.knn`). The depth is what the requested metrics
    need: 1 for precision@1, each query's ``R`` for R-precision and MAP@R (so ``k=None`` costs no full
    ranking there), all references only for ``mean_average_precision`` and ``mean_reciprocal_rank`` with
    ``k=None``. Any other ``knn_func(query, k, reference, ref_includes_query) -> (distances, indices)``
    (for example :class:`~dmlkit.evaluation.FaissKNN` or pytorch-metric-learning's) is called once.

    Differences from pytorch-metric-learning 2.9, each a fix: ``mean_reciprocal_rank`` alone works (it is
    listed in ``requires_knn``); the default search needs no faiss; an integer ``k`` beyond the available
    references is clamped instead of reading faiss's ``-1`` padding; inputs are not cast to float32
    (float64 stays float64, float16 is upcast); ``device=None`` means the query's device; ties are
    ordered by reference index, so results are deterministic.

    Subclasses add a metric like in pytorch-metric-learning: define ``calculate_<name>(self, **kwargs)``
    (kwargs: ``query``, ``reference``, ``query_labels``, ``reference_labels``, ``ref_includes_query``,
    ``label_comparison_fn``, and, for names listed by an overridden ``requires_knn``, ``knn_labels``,
    ``knn_distances``, ``label_counts``, ``lone_query_labels``, ``not_lone_query_mask``; for names in
    ``requires_clustering``, ``cluster_labels``). Such metrics get a neighbour table of depth ``k``
    (all references for ``k=None``).

    Args:
        include: metric names to compute (all when empty).
        exclude: metric names to skip.
        avg_of_avgs: average per class first, then over classes.
        return_per_class: return a list of per-class values (sorted by label) instead of one number.
        k: neighbours read by the metrics: an integer ``>= 1``, ``None`` (all references; R-based metrics
            only need ``R``) or ``"max_bin_count"`` (the largest ``R``).
        label_comparison_fn: ``fn(a, b) -> bool tensor`` deciding which labels match, broadcasting like
            ``torch.eq`` on ``(n, 1[, d])`` against ``(n, k[, d])``; default: equal labels (equal rows for
            2-D labels). Not supported together with NMI / AMI.
        device: where to compute; None: the query's device.
        knn_func: neighbour search; None: ``ExactKNN()`` (Euclidean).
        kmeans_func: ``fn(x, num_clusters) -> cluster labels``; None: ``KMeans(niter=20)`` (faiss when
            installed, else torch).
        at_k: list sizes for ``precision_at_k`` and ``recall_at_k`` (none by default).

    Example:
        >>> emb = torch.tensor([[0.0], [0.1], [1.0], [1.2], [0.6]])
        >>> calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"))
        >>> calc.get_accuracy(emb, torch.tensor([0, 0, 1, 1, 1]))
        {'mean_average_precision_at_r': 0.9, 'precision_at_1': 1.0}
    """

    function_keyword = "calculate_"

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        avg_of_avgs: bool = False,
        return_per_class: bool = False,
        k: int | str | None = None,
        label_comparison_fn: LabelComparison | None = None,
        device: torch.device | str | None = None,
        knn_func: Callable[..., tuple[Tensor, Tensor]] | None = None,
        kmeans_func: Callable[[Tensor, int], Tensor] | None = None,
        at_k: Sequence[int] = (),
    ) -> None:
        names = [x for x in dir(self) if x.startswith(self.function_keyword)]
        self.original_function_dict: dict[str, Callable[..., Any]] = {
            x[len(self.function_keyword) :]: getattr(self, x) for x in names
        }
        self.at_k = self._check_at_k(at_k)
        if not self.at_k:
            for name in _AT_K_METRICS:
                if name in include:
                    rule = f"a non-empty list of integers >= 1 when {name!r} is included"
                    raise ValueError(message(_OWNER, "at_k", rule, tuple(at_k)))
                self.original_function_dict.pop(name, None)
        self.check_primary_metrics(include, exclude)
        self.original_function_dict = self.get_function_dict(include, exclude)
        self.curr_function_dict = self.get_function_dict()
        if avg_of_avgs and return_per_class:
            raise ValueError(message(_OWNER, "return_per_class", "False when avg_of_avgs is True", True))
        self.avg_of_avgs = avg_of_avgs
        self.return_per_class = return_per_class
        self.device = None if device is None else torch.device(device)
        self.knn_func = ExactKNN() if knn_func is None else knn_func
        self.kmeans_func = KMeans(niter=20) if kmeans_func is None else kmeans_func
        valid_int = is_real_number(k, integer=True) and int(k) > 0  # type: ignore[arg-type]
        k = int(k) if valid_int else k  # type: ignore[arg-type]
        if not valid_int and k is not None and k != "max_bin_count":
            raise ValueError(message(_OWNER, "k", "an integer >= 1, None or 'max_bin_count'", k))
        self.k = k
        if label_comparison_fn is not None:
            clustering = [x for x in self.get_curr_metrics() if x in self.requires_clustering()]
            if clustering:
                raise NotImplementedError(
                    f"{_OWNER}: a custom `label_comparison_fn` cannot be combined with the clustering metrics "
                    f"{clustering}; exclude them."
                )
            self.label_comparison_fn: LabelComparison = label_comparison_fn
            self._custom_comparison = True
        else:
            self.label_comparison_fn = torch.eq
            self._custom_comparison = False

    # ------------------------------------------------------------------ pytorch-metric-learning's helpers

    @staticmethod
    def _check_at_k(at_k: Sequence[int]) -> tuple[int, ...]:
        values = tuple(at_k) if isinstance(at_k, (list, tuple)) else None
        if values is None or any(not is_real_number(v, integer=True) or v < 1 for v in values):
            raise ValueError(message(_OWNER, "at_k", "a list of integers >= 1", at_k))
        return tuple(sorted({int(v) for v in values}))

    def get_function_dict(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> dict[str, Any]:
        """The metric functions named by ``include`` (all when empty) minus ``exclude``."""
        chosen = include if len(include) > 0 else list(self.original_function_dict)
        return {k: v for k, v in self.original_function_dict.items() if k in chosen and k not in exclude}

    def get_curr_metrics(self) -> list[str]:
        """Names of the metrics the next result will hold."""
        return list(self.curr_function_dict)

    def requires_clustering(self) -> list[str]:
        """Metrics that need ``cluster_labels``."""
        return list(_CLUSTER_METRICS)

    def requires_knn(self) -> list[str]:
        """Metrics that need the neighbours (pytorch-metric-learning forgets mean_reciprocal_rank here)."""
        return [*_KNN_METRICS, *_AT_K_METRICS]

    def check_primary_metrics(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """Reject non-sequence arguments and unknown metric names (with close-match suggestions)."""
        known = list(self.original_function_dict)
        for arg, names in (("include", include), ("exclude", exclude)):
            if not isinstance(names, (tuple, list)):
                raise TypeError(message(_OWNER, arg, "a tuple or list of metric names", type(names).__name__))
            unknown = [n for n in names if n not in known]
            if unknown:
                close = difflib.get_close_matches(str(unknown[0]), known, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(repr(m) for m in close)}?" if close else ""
                raise ValueError(message(_OWNER, arg, "metric names among " + ", ".join(known), unknown[0]) + hint)

    def determine_k(self, bin_counts: Tensor, num_reference_embeddings: int, ref_includes_query: bool) -> int:
        """pytorch-metric-learning's neighbour count for ``k`` (None: all; "max_bin_count": the largest R)."""
        self_count = int(ref_includes_query)
        max_bin_count = int(bin_counts.max()) if bin_counts.numel() else 0
        if self.k == "max_bin_count":
            return max_bin_count - self_count
        if self.k is None:
            return num_reference_embeddings - self_count
        assert isinstance(self.k, int)
        at_r = {"r_precision", "mean_average_precision_at_r"} & set(self.get_curr_metrics())
        if self.k < max_bin_count - self_count and at_r:
            warnings.warn(
                f"{_OWNER}: k={self.k} is below the largest R ({max_bin_count - self_count}), so {sorted(at_r)} "
                "read fewer than R neighbours; use k='max_bin_count' or k=None for the exact values.",
                stacklevel=3,
            )
        return self.k

    def description(self) -> str:
        return "avg_of_avgs" if self.avg_of_avgs else ""

    def get_cluster_labels(self, query: Tensor, query_labels: Tensor, **kwargs: Any) -> Tensor:
        """k-means cluster labels of the queries, as many clusters as query labels."""
        num_clusters = len(torch.unique(_one_label_per_query(query_labels)))
        return self.kmeans_func(query, num_clusters)

    # ------------------------------------------------------------------ metrics, callable with PML's kwargs

    def calculate_NMI(self, query_labels: Tensor, cluster_labels: Tensor, **kwargs: Any) -> float:
        labels = _one_label_per_query(query_labels).cpu()
        return normalized_mutual_info(labels, torch.as_tensor(cluster_labels).flatten().cpu())

    def calculate_AMI(self, query_labels: Tensor, cluster_labels: Tensor, **kwargs: Any) -> float:
        labels = _one_label_per_query(query_labels).cpu()
        return adjusted_mutual_info(labels, torch.as_tensor(cluster_labels).flatten().cpu())

    def calculate_precision_at_1(self, **kwargs: Any) -> float | list[float]:
        return self._from_table("precision_at_1", **kwargs)

    def calculate_r_precision(self, **kwargs: Any) -> float | list[float]:
        return self._from_table("r_precision", **kwargs)

    def calculate_mean_average_precision_at_r(self, **kwargs: Any) -> float | list[float]:
        return self._from_table("mean_average_precision_at_r", **kwargs)

    def calculate_mean_average_precision(self, **kwargs: Any) -> float | list[float]:
        return self._from_table("mean_average_precision", **kwargs)

    def calculate_mean_reciprocal_rank(self, **kwargs: Any) -> float | list[float]:
        return self._from_table("mean_reciprocal_rank", **kwargs)

    def calculate_precision_at_k(self, **kwargs: Any) -> dict[str, float | list[float]]:
        return self._from_table_at_k("precision_at_k", **kwargs)

    def calculate_recall_at_k(self, **kwargs: Any) -> dict[str, float | list[float]]:
        return self._from_table_at_k("recall_at_k", **kwargs)

    def _from_table(self, name: str, **kwargs: Any) -> float | list[float]:
        values = self._table_values((name,), (), **kwargs)[name]
        return self._aggregate(values, kwargs["_codes"], kwargs["not_lone_query_mask"], kwargs["_num_classes"])

    def _from_table_at_k(self, name: str, **kwargs: Any) -> dict[str, float | list[float]]:
        values = self._table_values((name,), self.at_k, **kwargs)
        agg = kwargs["_codes"], kwargs["not_lone_query_mask"], kwargs["_num_classes"]
        return {key: self._aggregate(v, *agg) for key, v in values.items()}

    def _table_values(self, names: Sequence[str], at_k: Sequence[int], **kwargs: Any) -> dict[str, Tensor]:
        """Per-query values from a materialised ``knn_labels`` table, ``_ROWS`` queries at a time."""
        knn_labels, query_labels = kwargs["knn_labels"], kwargs["query_labels"]
        num_relevant = kwargs["_num_relevant"]
        limit = knn_labels.shape[1]
        if at_k and max(at_k) > limit:
            raise ValueError(message(_OWNER, "at_k", f"at most the neighbour-table depth ({limit})", max(at_k)))
        chunks: dict[str, list[Tensor]] = {}
        for start in range(0, knn_labels.shape[0], _ROWS):
            same = self._same(query_labels[start : start + _ROWS], knn_labels[start : start + _ROWS])
            part = _per_query(same, num_relevant[start : start + _ROWS], limit, names, at_k)
            for key, value in part.items():
                chunks.setdefault(key, []).append(value)
        return {key: torch.cat(parts) for key, parts in chunks.items()}

    def _same(self, query_labels: Tensor, neighbor_labels: Tensor) -> Tensor:
        """(n, D) bool: neighbour label matches the query label."""
        if self._custom_comparison:
            return self.label_comparison_fn(query_labels[:, None], neighbor_labels).bool()
        if query_labels.ndim == 2:
            return (query_labels[:, None] == neighbor_labels).all(-1)
        return query_labels[:, None] == neighbor_labels

    def _aggregate(self, values: Tensor, codes: Tensor, not_lone: Tensor, num_classes: int) -> float | list[float]:
        """Mean over the non-lone queries, or per class (sorted by label) for avg_of_avgs / return_per_class."""
        if not bool(not_lone.any()):
            return [float("nan")] * num_classes if self.return_per_class else float("nan")
        values, codes = values[not_lone], codes[not_lone]
        if not (self.avg_of_avgs or self.return_per_class):
            return float(values.mean())
        present, inverse = torch.unique(codes, return_inverse=True)
        sums = torch.zeros(present.shape[0], dtype=torch.float64, device=values.device).index_add_(0, inverse, values)
        per_class = sums / torch.bincount(inverse, minlength=present.shape[0]).to(torch.float64)
        return per_class.cpu().tolist() if self.return_per_class else float(per_class.mean())

    # ------------------------------------------------------------------ get_accuracy

    def _label_counts(
        self, query_labels: Tensor, reference_labels: Tensor, ref_includes_query: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(unique query labels, their match counts, per-query codes, R per query, not-lone mask)."""
        self_count = int(ref_includes_query)
        if not self._custom_comparison:
            q_codes, r_codes = _row_codes(query_labels, reference_labels)
            size = int(torch.cat([q_codes, r_codes]).max()) + 1 if q_codes.numel() else 0
            per_code = torch.bincount(r_codes, minlength=size)
            if query_labels.ndim == 2:
                unique_labels, codes = torch.unique(query_labels, dim=0, return_inverse=True)
            else:
                unique_labels, codes = torch.unique(query_labels, return_inverse=True)
            match_counts = torch.zeros(unique_labels.shape[0], dtype=torch.long, device=codes.device)
            match_counts[codes] = per_code[q_codes]
            num_relevant = (per_code[q_codes] - self_count).clamp(min=0)
            not_lone = num_relevant > 0
            return unique_labels, match_counts, codes, num_relevant, not_lone
        unique_labels, q_codes = torch.unique(query_labels, dim=0, return_inverse=True)
        counts = []
        for start in range(0, unique_labels.shape[0], 64):
            block = unique_labels[start : start + 64]
            counts.append(self.label_comparison_fn(block[:, None], reference_labels[None]).bool().sum(1))
        match_counts = torch.cat(counts).long() if counts else torch.zeros(0, dtype=torch.long)
        matches_itself = self.label_comparison_fn(unique_labels, unique_labels).bool().long()
        lone = match_counts - matches_itself * self_count <= 0 if ref_includes_query else match_counts == 0
        num_relevant = (match_counts - self_count)[q_codes]
        return unique_labels, match_counts, q_codes, num_relevant, ~lone[q_codes]

    def get_accuracy(
        self,
        query: Any,
        query_labels: Any,
        reference: Any = None,
        reference_labels: Any = None,
        ref_includes_query: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The metrics of ``query`` against ``reference`` (the queries themselves when None).

        Args:
            query: (Nq, d) embeddings (tensor or numpy array).
            query_labels: (Nq,) or (Nq, label_size) labels.
            reference: (Nr, d) embeddings; None: the queries, each one's own row excluded.
            reference_labels: (Nr,) or (Nr, label_size) labels, required with ``reference``.
            ref_includes_query: the first Nq references are the queries (checked); each query's own row is
                excluded by index from its neighbours and its ``R``.
            include: compute only these metrics (among the constructor's).
            exclude: skip these metrics.

        Returns:
            ``{metric: value}``; ``precision_at_k`` / ``recall_at_k`` expand to ``precision_at_{k}`` /
            ``recall_at_{k}`` keys.
        """
        device = self.device or (query.device if isinstance(query, Tensor) else torch.device("cpu"))
        query = _prepare_embeddings(query, "query", device)
        query_labels = _prepare_labels(query_labels, "query_labels", query.shape[0], "query", device)
        if reference is None:
            if reference_labels is not None:
                raise ValueError(message(_OWNER, "reference_labels", "None when `reference` is None", "a tensor"))
            reference, reference_labels, ref_includes_query = query, query_labels, True
        else:
            reference = _prepare_embeddings(reference, "reference", device)
            if reference_labels is None:
                raise ValueError(message(_OWNER, "reference_labels", "given when `reference` is given", None))
            reference_labels = _prepare_labels(
                reference_labels, "reference_labels", reference.shape[0], "reference", device
            )
            if reference.shape[1] != query.shape[1]:
                rule = f"of embedding size {query.shape[1]} like `query`"
                raise ValueError(message(_OWNER, "reference", rule, reference.shape[1]))
            if ref_includes_query:
                nq = query.shape[0]
                same_rows = reference.shape[0] >= nq and torch.allclose(query.to(reference.dtype), reference[:nq])
                same_labels = reference_labels.shape[0] >= nq and torch.equal(
                    query_labels.to(reference_labels.dtype), reference_labels[:nq]
                )
                if not (same_rows and same_labels):
                    rule = f"a set whose first {nq} rows and labels are the queries' when ref_includes_query"
                    raise ValueError(message(_OWNER, "reference", rule, "a set that does not start with them"))
        if reference_labels.ndim != query_labels.ndim:
            rule = f"{query_labels.ndim}-D like `query_labels`"
            raise ValueError(message(_OWNER, "reference_labels", rule, tuple(reference_labels.shape)))

        self.check_primary_metrics(include, exclude)
        self.curr_function_dict = self.get_function_dict(include, exclude)
        metrics = self.get_curr_metrics()
        kwargs: dict[str, Any] = {
            "query": query,
            "reference": reference,
            "query_labels": query_labels,
            "reference_labels": reference_labels,
            "ref_includes_query": ref_includes_query,
            "label_comparison_fn": self.label_comparison_fn,
        }
        results: dict[str, Any] = {}
        knn_names = [m for m in metrics if m in self.requires_knn()]
        if knn_names:
            results.update(self._knn_metrics(knn_names, kwargs))
        if any(m in self.requires_clustering() for m in metrics):
            kwargs["cluster_labels"] = self.get_cluster_labels(**kwargs)
        out: dict[str, Any] = {}
        for name in metrics:
            if name in results:
                out[name] = results[name]
            elif name in _AT_K_METRICS and name in results.get("_at_k", {}):
                out.update(results["_at_k"][name])
            else:
                value = self.curr_function_dict[name](**kwargs)
                if isinstance(value, dict):
                    out.update(value)
                else:
                    out[name] = value
        return out

    def _is_builtin(self, name: str) -> bool:
        attr = self.function_keyword + name
        own = getattr(type(self), attr, None)
        return (name in _KNN_METRICS or name in _AT_K_METRICS) and own is getattr(AccuracyCalculator, attr)

    def _knn_metrics(self, names: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Values of the built-in neighbour metrics (streamed when possible); fills ``kwargs`` for the others."""
        query, reference = kwargs["query"], kwargs["reference"]
        query_labels, reference_labels = kwargs["query_labels"], kwargs["reference_labels"]
        includes = kwargs["ref_includes_query"]
        unique_labels, match_counts, codes, num_relevant, not_lone = self._label_counts(
            query_labels, reference_labels, includes
        )
        num_classes = unique_labels.shape[0]
        available = reference.shape[0] - int(includes)
        pml_k = self.determine_k(match_counts, reference.shape[0], includes)
        limit = max(min(pml_k, available), 0)
        if not bool(not_lone.any()):
            warnings.warn(f"{_OWNER}: none of the query labels are in the reference set.", stacklevel=3)
        if self.at_k and max(self.at_k) > available and any(n in _AT_K_METRICS for n in names):
            rule = f"at most the number of available references ({available})"
            raise ValueError(message(_OWNER, "at_k", rule, max(self.at_k)))
        builtin = [n for n in names if self._is_builtin(n)]
        custom = [n for n in names if not self._is_builtin(n)]
        streamed = isinstance(self.knn_func, ExactKNN) and not custom
        kwargs.update(
            {
                "label_counts": (unique_labels, match_counts),
                "lone_query_labels": unique_labels[torch.unique(codes[~not_lone])],
                "not_lone_query_mask": not_lone,
                "_codes": codes,
                "_num_relevant": num_relevant,
                "_num_classes": num_classes,
            }
        )
        at_k = self.at_k if any(n in _AT_K_METRICS for n in builtin) else ()
        depth = 0
        if "precision_at_1" in builtin:
            depth = 1
        if {"r_precision", "mean_average_precision_at_r"} & set(builtin):
            depth = max(depth, min(int(num_relevant[not_lone].max()) if bool(not_lone.any()) else 0, limit))
        if {"mean_average_precision", "mean_reciprocal_rank"} & set(builtin):
            depth = max(depth, limit)
        depth = max(depth, max(at_k, default=0))
        if custom:
            depth = max(depth, limit)
        depth = min(depth, available)
        values: dict[str, Tensor] = {}
        if depth >= 1 and bool(not_lone.any()) or custom:
            if depth < 1:
                raise ValueError(message(_OWNER, "k", "a neighbour count >= 1 for the requested metrics", pml_k))
            if streamed:
                values = self._stream(builtin, at_k, depth, limit, kwargs)
            else:
                distances, indices = self.knn_func(query, depth, reference, includes)
                kwargs["knn_distances"] = distances
                kwargs["knn_labels"] = reference_labels[indices.to(reference_labels.device).long()]
                values = self._table_mixed(builtin, at_k, limit, kwargs)
        results: dict[str, Any] = {}
        agg: tuple[Tensor, Tensor, int] = (codes, not_lone, num_classes)
        nan_values = torch.zeros(query.shape[0], dtype=torch.float64, device=query.device)
        for name in builtin:
            if name in _AT_K_METRICS:
                results.setdefault("_at_k", {})[name] = {
                    f"{name[: -len('k')]}{k}": self._aggregate(values.get(f"{name[: -len('k')]}{k}", nan_values), *agg)
                    for k in at_k
                }
            else:
                results[name] = self._aggregate(values.get(name, nan_values), *agg)
        return results

    def _table_mixed(
        self, names: list[str], at_k: Sequence[int], limit: int, kwargs: dict[str, Any]
    ) -> dict[str, Tensor]:
        rank_names = [n for n in names if n not in _AT_K_METRICS]
        table = kwargs["knn_labels"]
        values = self._table_values(rank_names, (), **{**kwargs, "knn_labels": table[:, :limit]}) if rank_names else {}
        values.update(self._table_values([n for n in names if n in _AT_K_METRICS], at_k, **kwargs))
        return values

    def _stream(
        self, names: list[str], at_k: Sequence[int], depth: int, limit: int, kwargs: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Per-query values from the exact search, one query block at a time."""
        assert isinstance(self.knn_func, ExactKNN)
        query, reference = kwargs["query"], kwargs["reference"]
        query_labels, reference_labels = kwargs["query_labels"], kwargs["reference_labels"]
        num_relevant = kwargs["_num_relevant"]
        rank_names = [n for n in names if n not in _AT_K_METRICS]
        at_names = [n for n in names if n in _AT_K_METRICS]
        out: dict[str, Tensor] = {}
        blocks = _iter_checked(
            query, depth, reference, kwargs["ref_includes_query"], self.knn_func.distance, self.knn_func.block_size
        )
        for start, found in blocks:
            stop = start + found.indices.shape[0]
            same = self._same(query_labels[start:stop], reference_labels[found.indices])
            part = _per_query(same[:, :limit], num_relevant[start:stop], limit, rank_names, ())
            part.update(_per_query(same, num_relevant[start:stop], limit, at_names, at_k))
            for key, value in part.items():
                if key not in out:
                    out[key] = torch.empty(query.shape[0], dtype=torch.float64, device=query.device)
                out[key][start:stop] = value
        return out
