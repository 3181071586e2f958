"""A scikit-learn k-nearest-neighbour classifier over embeddings, or over the inputs of an embedding model.

This module imports scikit-learn (its estimator base classes), so ``dmlkit.evaluation`` does not import it
eagerly.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d
from torch import Tensor, nn

from .._validation import Described, check_choice, check_embeddings, check_range, message
from .knn import KnnDistance, knn

__all__ = ["KNNClassifier", "KnnWeights", "KnnMetric"]

_OWNER = "KNNClassifier"


def _validate(estimator: Any, *args: Any, **kwargs: Any) -> Any:
    """scikit-learn's input validation: ``sklearn.utils.validation.validate_data`` (1.6+), else the method."""
    try:
        from sklearn.utils.validation import validate_data as validate
    except ImportError:  # scikit-learn < 1.6
        return estimator._validate_data(*args, **kwargs)
    return validate(estimator, *args, **kwargs)


class KnnWeights(str, enum.Enum):
    """How the k neighbours vote: ``UNIFORM`` one vote each, ``DISTANCE`` a vote of ``1 / distance``."""

    UNIFORM = "uniform"
    DISTANCE = "distance"


class KnnMetric(str, enum.Enum):
    """How embeddings are compared: ``EUCLIDEAN`` (L2) or ``COSINE`` (distance ``1 - cosine similarity``)."""

    EUCLIDEAN = "euclidean"
    COSINE = "cosine"


class KNNClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """k-nearest-neighbour classification in an embedding space, as a scikit-learn estimator.

    The label of a query is the majority label of its ``n_neighbors`` nearest training embeddings (Cover and
    Hart, 1967, "Nearest neighbor pattern classification"), each neighbour voting once (``"uniform"``) or
    with weight ``1 / distance`` (``"distance"``; Dudani, 1976). As in scikit-learn's
    ``KNeighborsClassifier``, a query at distance exactly 0 from some training points takes its votes from
    those points only, each with weight 1. ``predict_proba`` gives the normalised votes; ``predict`` the
    class with most votes, ties going to the first class in ``classes_``.

    Neighbours come from :func:`~dmlkit.evaluation.knn` (exact, streamed in blocks, equal distances ordered
    by training index); the distances that weight the votes are then recomputed from the embeddings'
    differences, so a duplicate of a training point is at distance exactly 0.

    With an ``encoder`` (any ``nn.Module`` mapping a batch of inputs to ``(batch, d)`` embeddings), ``fit``
    and ``predict`` take raw inputs: tensors, arrays or lists, cut into batches of ``batch_size`` and
    embedded in eval mode without gradients (the module's mode is restored afterwards; floating-point inputs
    are cast to the dtype of its parameters and moved to their device). Without one, inputs are the
    embeddings themselves: a ``(n, d)`` array or tensor.

    Args:
        n_neighbors: neighbours per query, ``1 <=`` it ``<=`` the number of training samples.
        weights: ``"uniform"`` or ``"distance"``.
        metric: ``"euclidean"`` or ``"cosine"`` (cosine distance ``1 - cos``, as scikit-learn's
            ``metric="cosine"``).
        encoder: an optional embedding model applied to the inputs.
        batch_size: inputs embedded (and queries classified) per batch, ``>= 1``.
        block_size: training embeddings per block of the neighbour search, ``>= 1``.

    Attributes:
        classes_: the sorted distinct training labels (NumPy array).
        embeddings_: the training embeddings (tensor).
        n_features_in_: the embedding size (input columns when there is no encoder).

    Example:
        >>> import numpy as np
        >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [0.9, 1.0]])
        >>> clf = KNNClassifier(n_neighbors=3, weights="distance").fit(X, ["a", "a", "b", "b"])
        >>> clf.predict(np.array([[0.05, 0.1], [1.0, 0.9]])).tolist()
        ['a', 'b']
        >>> clf.predict_proba(np.array([[0.0, 0.0]])).tolist()
        [[1.0, 0.0]]
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        *,
        weights: str = "uniform",
        metric: str = "euclidean",
        encoder: nn.Module | None = None,
        batch_size: int = 1024,
        block_size: int = 4096,
    ) -> None:
        # scikit-learn's convention: the constructor only stores its arguments; fit checks them.
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.metric = metric
        self.encoder = encoder
        self.batch_size = batch_size
        self.block_size = block_size

    def _check_params(self) -> tuple[KnnWeights, KnnMetric]:
        check_range(_OWNER, "n_neighbors", self.n_neighbors, low=1, integer=True)
        check_range(_OWNER, "batch_size", self.batch_size, low=1, integer=True)
        check_range(_OWNER, "block_size", self.block_size, low=1, integer=True)
        if self.encoder is not None and not isinstance(self.encoder, nn.Module):
            rule = "an nn.Module or None"
            raise TypeError(message(_OWNER, "encoder", rule, Described(type(self.encoder).__name__)))
        return (
            check_choice(_OWNER, "weights", self.weights, KnnWeights),
            check_choice(_OWNER, "metric", self.metric, KnnMetric),
        )

    def fit(self, X: Any, y: Any) -> KNNClassifier:
        """Store the embeddings of ``X`` and the labels ``y`` (class labels, one per sample).

        Without an encoder, a non-tensor ``X`` and ``y`` go through scikit-learn's input validation (2-D
        finite numbers, no sparse matrices, classification targets).
        """
        self._check_params()
        labels = y.detach().cpu().numpy() if isinstance(y, Tensor) else y
        if self.encoder is None and not isinstance(X, Tensor):
            array, labels = _validate(self, X, labels, dtype=[np.float64, np.float32])
            embeddings = _from_numpy(array)
        else:
            if labels is None:
                raise ValueError(message(_OWNER, "y", "given: a classifier requires y", None))
            embeddings = self._embed(X, "X")
            labels = column_or_1d(labels, warn=True)
            if labels.shape[0] != embeddings.shape[0]:
                rule = f"one label per sample ({embeddings.shape[0]})"
                raise ValueError(message(_OWNER, "y", rule, Described(f"{labels.shape[0]} labels")))
            self.n_features_in_ = int(embeddings.shape[1])
        check_classification_targets(labels)
        self.classes_, codes = np.unique(labels, return_inverse=True)
        self.embeddings_ = embeddings
        self.label_codes_ = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(embeddings.device)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """The normalised votes, ``(n, len(classes_))`` float64, columns in the order of ``classes_``."""
        check_is_fitted(self)
        weighting, measure = self._check_params()
        reference = self.embeddings_
        if self.n_neighbors > reference.shape[0]:
            rule = f"<= the number of training samples (n_samples = {reference.shape[0]})"
            raise ValueError(message(_OWNER, "n_neighbors", rule, self.n_neighbors))
        if self.encoder is None and not isinstance(X, Tensor):
            queries = _from_numpy(_validate(self, X, reset=False, dtype=[np.float64, np.float32]))
        else:
            queries = self._embed(X, "X")
        if queries.shape[1] != reference.shape[1]:
            rule = f"of embedding size {reference.shape[1]} like the training data"
            raise ValueError(message(_OWNER, "X", rule, Described(f"embedding size {queries.shape[1]}")))
        dtype = torch.promote_types(queries.dtype, reference.dtype)
        queries, reference = queries.to(dtype), reference.to(dtype)
        out = np.empty((queries.shape[0], len(self.classes_)), dtype=np.float64)
        for start in range(0, queries.shape[0], self.batch_size):
            block = queries[start : start + self.batch_size]
            votes = self._votes(block, reference, weighting, measure)
            out[start : start + block.shape[0]] = votes.cpu().numpy()
        return out

    def predict(self, X: Any) -> np.ndarray:
        """The class with most (weighted) votes for each sample of ``X``."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_[np.argmax(proba, axis=1)])

    def _votes(self, block: Tensor, reference: Tensor, weighting: KnnWeights, measure: KnnMetric) -> Tensor:
        search = KnnDistance.COSINE if measure is KnnMetric.COSINE else KnnDistance.EUCLIDEAN
        idx = knn(block, self.n_neighbors, reference, distance=search, block_size=self.block_size).indices
        if weighting is KnnWeights.UNIFORM:
            weight = torch.ones(idx.shape, dtype=torch.float64, device=idx.device)
        else:
            dist = _neighbor_distances(block.to(torch.float64), reference[idx].to(torch.float64), measure)
            exact = dist == 0
            weight = torch.where(exact.any(1, keepdim=True), exact.to(torch.float64), 1.0 / dist)
        votes = torch.zeros(block.shape[0], len(self.classes_), dtype=torch.float64, device=idx.device)
        votes.scatter_add_(1, self.label_codes_[idx], weight)
        return votes / votes.sum(1, keepdim=True)

    def _embed(self, X: Any, arg: str) -> Tensor:
        """Embeddings of the encoder's inputs, or of a tensor of embeddings."""
        if self.encoder is None:
            x = X.detach()
            if not x.is_floating_point():
                x = x.to(torch.float64)
            check_embeddings(_OWNER, x, arg)
            return x
        return _encode(self.encoder, X, self.batch_size, arg)


def _neighbor_distances(queries: Tensor, neighbors: Tensor, measure: KnnMetric) -> Tensor:
    """(n, k) distances of each query (n, d) to its neighbours (n, k, d), exactly 0 for identical vectors.

    The search ranks by a matrix product, whose rounding would leave a duplicate at a tiny positive distance.
    """
    if measure is KnnMetric.EUCLIDEAN:
        return torch.linalg.vector_norm(queries[:, None, :] - neighbors, dim=-1)
    q = nn.functional.normalize(queries, dim=1)[:, None, :]
    r = nn.functional.normalize(neighbors, dim=-1)
    dist = (1.0 - (q * r).sum(-1)).clamp_(min=0.0)
    return dist.masked_fill_((q == r).all(-1) & (q != 0).any(-1), 0.0)


def _from_numpy(array: np.ndarray) -> Tensor:
    # validated arrays may be read-only (memory maps); torch wants writable memory
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _encode(encoder: nn.Module, X: Any, batch_size: int, arg: str) -> Tensor:
    params = [p for p in encoder.parameters() if p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else None
    num = X.shape[0] if isinstance(X, (Tensor, np.ndarray)) else len(X)
    if num == 0:
        raise ValueError(message(_OWNER, arg, "at least one sample", Described("0 samples")))
    outputs = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for start in range(0, num, batch_size):
                batch = _to_batch(X[start : start + batch_size], device, dtype)
                out = encoder(batch)
                if not isinstance(out, Tensor) or out.ndim != 2:
                    rule = "an encoder returning (batch, embedding_size) tensors"
                    shown = f"tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(message(_OWNER, "encoder", rule, Described(f"one returning a {shown}")))
                outputs.append(out.detach())
    finally:
        encoder.train(was_training)
    embeddings = torch.cat(outputs)
    check_embeddings(_OWNER, embeddings, f"encoder({arg})")
    return embeddings


def _to_batch(batch: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    if isinstance(batch, Tensor):
        if batch.is_floating_point() and dtype is not None:
            batch = batch.to(dtype)
        return batch.to(device)
    return list(batch) if isinstance(batch, Sequence) and not isinstance(batch, str) else batch
