"""Clustering quality: k-means (faiss, scikit-learn or torch), NMI in torch float64 and AMI by scikit-learn.

NMI and AMI follow Vinh, Epps and Bailey, 2010, "Information Theoretic Measures for Clusterings
Comparison" (JMLR 11), with the arithmetic mean of the two entropies as normaliser (scikit-learn's
default), and agree with ``sklearn.metrics.normalized_mutual_info_score`` /
``adjusted_mutual_info_score`` including their limit cases. They read only the contingency table, so
their memory is ``O(num_classes * num_clusters)`` whatever the number of samples.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_range, message
from ..errors import MissingDependencyError
from .knn import knn

__all__ = ["KMeansBackend", "KMeans", "FaissKMeans", "normalized_mutual_info", "adjusted_mutual_info"]

_EPS = float(torch.finfo(torch.float64).eps)


def _codes(labels: Tensor) -> Tensor:
    """Labels (1-D, or (N, 1)) as consecutive codes 0..C-1."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(message("clustering", "labels", "1-D (or of shape (N, 1))", tuple(labels.shape)))
    return torch.unique(labels, return_inverse=True)[1]


def _contingency(labels_true: Tensor, labels_pred: Tensor) -> Tensor:
    a, b = _codes(labels_true).cpu(), _codes(labels_pred).cpu()
    if a.shape != b.shape:
        raise ValueError(message("clustering", "labels_pred", f"of length {a.shape[0]} like `labels_true`", b.shape[0]))
    rows = int(a.max()) + 1 if a.numel() else 0
    cols = int(b.max()) + 1 if b.numel() else 0
    flat = torch.bincount(a * max(cols, 1) + b, minlength=rows * cols)
    return flat.view(rows, cols).to(torch.float64)


def _entropy(counts: Tensor) -> float:
    counts = counts[counts > 0]
    total = counts.sum()
    p = counts / total
    return float(-(p * (counts.log() - total.log())).sum())


def _mutual_information(table: Tensor) -> float:
    if table.shape[0] <= 1 or table.shape[1] <= 1:
        return 0.0
    n = table.sum()
    a, b = table.sum(1), table.sum(0)
    i, j = table.nonzero(as_tuple=True)
    nij = table[i, j]
    terms = nij / n * (nij.log() + n.log() - a[i].log() - b[j].log())
    terms = torch.where(terms.abs() < _EPS, torch.zeros_like(terms), terms)
    return max(float(terms.sum()), 0.0)


def _one_cluster_cases(table: Tensor) -> float | None:
    if table.shape[0] == table.shape[1] == 1 or table.shape[0] == table.shape[1] == 0:
        return 1.0
    return None


def normalized_mutual_info(labels_true: Tensor, labels_pred: Tensor) -> float:
    """NMI = MI / mean(H(true), H(pred)) (Vinh et al., 2010), equal to scikit-learn's default NMI.

    Args:
        labels_true: (N,) or (N, 1) class labels (any values).
        labels_pred: (N,) or (N, 1) cluster labels.

    Example:
        >>> round(normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 3, 3])), 6)
        1.0
    """
    table = _contingency(labels_true, labels_pred)
    special = _one_cluster_cases(table)
    if special is not None:
        return special
    mi = _mutual_information(table)
    if mi == 0:
        return 0.0
    return mi / ((_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2)


def adjusted_mutual_info(labels_true: Tensor, labels_pred: Tensor) -> float:
    """AMI = (MI - E[MI]) / (mean(H(true), H(pred)) - E[MI]) (Vinh et al., 2010), equal to scikit-learn's.

    Args:
        labels_true: (N,) or (N, 1) class labels (any values).
        labels_pred: (N,) or (N, 1) cluster labels.

    Example:
        >>> round(adjusted_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0])), 6)
        1.0
    """
    _contingency(labels_true, labels_pred)  # the shape checks, with dmlkit's messages
    from sklearn.metrics import adjusted_mutual_info_score

    # E[MI] sums over every feasible cell count of every (class, cluster) pair; scikit-learn's compiled
    # loop does it about 5x faster than torch's vectorised lgamma
    true, pred = (_codes(labels).cpu().numpy() for labels in (labels_true, labels_pred))
    return float(adjusted_mutual_info_score(true, pred))


def _kmeans_plus_plus(x: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007): each next centre drawn with probability ~ D(x)^2."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centres = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, num_clusters):
        weights = nearest.double().cpu()
        if float(weights.sum()) <= 0:  # fewer distinct points than clusters: any point will do
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return torch.stack(centres).clone()


class KMeansBackend(str, enum.Enum):
    """Which library runs :class:`KMeans`: ``AUTO`` is faiss when installed, else torch."""

    AUTO = "auto"
    FAISS = "faiss"
    SKLEARN = "sklearn"
    TORCH = "torch"


class KMeans:
    """Lloyd's k-means (Lloyd, 1982) as a ``kmeans_func(x, num_clusters) -> cluster labels`` callable.

    Like faiss, training uses at most ``max_points_per_centroid * num_clusters`` points drawn at random;
    every point is then assigned to its nearest centroid by the streamed exact search of
    :func:`~dmlkit.evaluation.knn`, so memory stays bounded for millions of points. The torch backend seeds
    with k-means++ (Arthur and Vassilvitskii, 2007) and keeps a centroid in place when its cluster empties.

    Args:
        niter: Lloyd iterations, ``>= 1`` (pytorch-metric-learning uses 20).
        seed: seed of the point sampling and initialisation (faiss's default, so that the faiss backend
            clusters exactly like pytorch-metric-learning's ``FaissKMeans``).
        backend: ``"auto"`` (faiss if installed, else torch), ``"faiss"``, ``"sklearn"`` or ``"torch"``.
        max_points_per_centroid: training-sample cap per cluster, ``>= 1``.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> labels = KMeans(backend="torch")(x, 2)
        >>> bool(labels[0] == labels[1]) and bool(labels[2] == labels[3]) and bool(labels[0] != labels[2])
        True
    """

    def __init__(
        self,
        niter: int = 20,
        seed: int = 1234,
        backend: KMeansBackend | str = "auto",
        max_points_per_centroid: int = 256,
    ) -> None:
        check_range("KMeans", "niter", niter, low=1, integer=True)
        check_range("KMeans", "seed", seed, integer=True)
        check_range("KMeans", "max_points_per_centroid", max_points_per_centroid, low=1, integer=True)
        self.niter = niter
        self.seed = seed
        self.backend = check_choice("KMeans", "backend", backend, KMeansBackend)
        self.max_points_per_centroid = max_points_per_centroid

    def __call__(self, x: Tensor, num_clusters: int) -> Tensor:
        check_embeddings("KMeans", x, "x")
        check_range("KMeans", "num_clusters", num_clusters, low=1, high=max(x.shape[0], 1), integer=True)
        backend = self.backend
        if backend is KMeansBackend.AUTO:
            try:
                import faiss  # noqa: F401
            except ImportError:
                backend = KMeansBackend.TORCH
            else:
                backend = KMeansBackend.FAISS
        if backend is KMeansBackend.FAISS:
            return self._faiss(x, num_clusters)
        if backend is KMeansBackend.SKLEARN:
            return self._sklearn(x, num_clusters)
        return self._torch(x, num_clusters)

    def _sample(self, x: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
        cap = self.max_points_per_centroid * num_clusters
        if x.shape[0] <= cap:
            return x
        return x[torch.randperm(x.shape[0], generator=generator)[:cap].to(x.device)]

    def _torch(self, x: Tensor, num_clusters: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        train = self._sample(x, num_clusters, generator).to(dtype)
        centroids = _kmeans_plus_plus(train, num_clusters, generator)
        for _ in range(self.niter):
            assign = knn(train, 1, centroids).indices[:, 0]
            sums = torch.zeros_like(centroids).index_add_(0, assign, train)
            counts = torch.bincount(assign, minlength=num_clusters)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None].to(dtype)
        return knn(x.to(dtype), 1, centroids).indices[:, 0]

    def _faiss(self, x: Tensor, num_clusters: int) -> Tensor:
        try:
            import faiss
        except ImportError:
            raise MissingDependencyError("faiss-cpu", "faiss", "KMeans(backend='faiss')") from None
        data = x.detach().to("cpu", torch.float32).contiguous().numpy()
        kmeans = faiss.Kmeans(
            data.shape[1],
            num_clusters,
            niter=self.niter,
            seed=self.seed,
            verbose=False,
            max_points_per_centroid=self.max_points_per_centroid,
        )
        kmeans.train(data)
        _, assign = kmeans.index.search(data, 1)
        return torch.from_numpy(assign[:, 0]).long().to(x.device)

    def _sklearn(self, x: Tensor, num_clusters: int) -> Tensor:
        try:
            from sklearn.cluster import KMeans as SkKMeans
        except ImportError:
            raise MissingDependencyError("scikit-learn", "sklearn", "KMeans(backend='sklearn')") from None
        generator = torch.Generator().manual_seed(self.seed)
        train = self._sample(x, num_clusters, generator).detach().cpu().double().numpy()
        model = SkKMeans(num_clusters, n_init=1, max_iter=self.niter, random_state=self.seed).fit(train)
        centroids = torch.from_numpy(model.cluster_centers_).to(x.device)
        return knn(x.double(), 1, centroids).indices[:, 0]

    def __repr__(self) -> str:
        return f"KMeans(niter={self.niter}, seed={self.seed}, backend={self.backend.value!r})"


class FaissKMeans(KMeans):
    """pytorch-metric-learning's ``FaissKMeans(**kwargs)``: :class:`KMeans` with faiss's defaults (25
    iterations, seed 1234, at most 256 training points per centroid), on faiss when it is installed.

    pytorch-metric-learning hands every keyword to ``faiss.Kmeans``. The ones with a meaning here are taken:
    ``niter``, ``seed``, ``max_points_per_centroid``, and ``verbose`` (faiss's progress output, not printed
    here); any other raises a ``TypeError`` that lists them.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> labels = FaissKMeans(niter=10)(x, 2)
        >>> bool(labels[0] == labels[1]) and bool(labels[0] != labels[2])
        True
    """

    _OPTIONS = ("niter", "seed", "max_points_per_centroid", "verbose")

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self._OPTIONS))
        if unknown:
            raise TypeError(
                f"FaissKMeans: unsupported faiss.Kmeans option(s) {unknown}; supported: {', '.join(self._OPTIONS)}."
            )
        super().__init__(
            niter=kwargs.get("niter", 25),
            seed=kwargs.get("seed", 1234),
            max_points_per_centroid=kwargs.get("max_points_per_centroid", 256),
        )
