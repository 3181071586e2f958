"""Pre-computed embeddings stored as NumPy ``.npy`` files: a features matrix and a label vector.

Training a small head (or evaluating retrieval) on features from a frozen encoder is common practice in
metric learning (e.g. the linear-probe protocol of Chen et al., 2020, SimCLR, arXiv:2002.05709). The two
arrays are kept in separate ``.npy`` files (``numpy.save``), read without unpickling.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .._validation import Described, check_embeddings, check_labels, message
from ..errors import CorruptFileError

__all__ = ["load_embeddings", "EmbeddingDataset"]


def _read_npy(owner: str, path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{owner}: the file {path} does not exist.")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise CorruptFileError(f"{owner}: cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        # np.load returns an NpzFile for .npz archives
        array.close()
        raise CorruptFileError(f"{owner}: {path} is an .npz archive; a .npy file holding one array is expected.")
    return array


def load_embeddings(
    features_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Load ``(features, labels)`` from two ``.npy`` files.

    Args:
        features_path: a 2-D floating-point array of shape ``(N, D)``, finite.
        labels_path: a 1-D integer array of shape ``(N,)``.
        dtype: the floating-point dtype of the returned features.

    Returns:
        ``(features, labels)``: features of shape ``(N, D)`` and dtype ``dtype``; labels ``int64`` of shape
        ``(N,)``.

    Raises:
        FileNotFoundError: a file does not exist.
        CorruptFileError: a file is not a readable ``.npy`` array (truncated, pickled objects, an ``.npz``).
        TypeError: features that are not floating point, or labels that are not integers.
        ValueError: wrong numbers of dimensions, non-finite features, or row counts that differ.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> folder = tempfile.mkdtemp()
        >>> np.save(os.path.join(folder, "x.npy"), np.ones((3, 2), dtype=np.float64))
        >>> np.save(os.path.join(folder, "y.npy"), np.array([0, 1, 1]))
        >>> x, y = load_embeddings(os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy"))
        >>> tuple(x.shape), x.dtype, y.tolist()
        ((3, 2), torch.float32, [0, 1, 1])
    """
    owner = "load_embeddings"
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(message(owner, "dtype", "a floating-point torch.dtype", dtype))
    features_file, labels_file = Path(features_path), Path(labels_path)
    features = _read_npy(owner, features_file)
    labels = _read_npy(owner, labels_file)
    if features.ndim != 2:
        rule = "a 2-D array of shape (N, D)"
        raise ValueError(message(owner, "features", rule, Described(f"shape {features.shape} in {features_file}")))
    if not np.issubdtype(features.dtype, np.floating):
        rule = "a floating-point array"
        raise TypeError(message(owner, "features", rule, Described(f"dtype {features.dtype} in {features_file}")))
    if labels.ndim != 1:
        rule = "a 1-D array of shape (N,)"
        raise ValueError(message(owner, "labels", rule, Described(f"shape {labels.shape} in {labels_file}")))
    if not np.issubdtype(labels.dtype, np.integer):
        rule = "an integer array"
        raise TypeError(message(owner, "labels", rule, Described(f"dtype {labels.dtype} in {labels_file}")))
    if labels.shape[0] != features.shape[0]:
        rule = f"of the same length as the rows of `features` ({features.shape[0]} in {features_file})"
        raise ValueError(message(owner, "labels", rule, Described(f"length {labels.shape[0]} in {labels_file}")))
    out_features = torch.from_numpy(np.ascontiguousarray(features)).to(dtype)
    out_labels = torch.from_numpy(labels.astype(np.int64))
    check_embeddings(owner, out_features, "features")
    return out_features, out_labels


class EmbeddingDataset(TensorDataset):
    """A data set of ``(embedding, label)`` pairs over a features matrix and its labels.

    Items are ``(features[i], labels[i])`` tensors, which ``DataLoader`` stacks into batches.

    Args:
        features: ``(N, D)`` finite floating-point tensor.
        labels: ``(N,)`` integer tensor.

    Attributes:
        features, labels: the tensors given.

    Example:
        >>> data = EmbeddingDataset(torch.zeros(4, 8), torch.tensor([0, 0, 1, 1]))
        >>> len(data), tuple(data[2][0].shape), int(data[2][1])
        (4, (8,), 1)
    """

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        check_embeddings("EmbeddingDataset", features, "features")
        check_labels("EmbeddingDataset", labels, features.shape[0], embeddings_arg="features")
        super().__init__(features, labels)
        self.features = features
        self.labels = labels

    @classmethod
    def from_npy(
        cls,
        features_path: str | os.PathLike[str],
        labels_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype = torch.float32,
    ) -> EmbeddingDataset:
        """The data set of two ``.npy`` files, read by :func:`load_embeddings`."""
        return cls(*load_embeddings(features_path, labels_path, dtype=dtype))
