"""Data sets, class-disjoint splits, image augmentations and random views (layer 5).

A data set is a pair ``(features, labels)`` of tensors; wrap a split in ``torch.utils.data.TensorDataset``:

Example:
    >>> from torch.utils.data import TensorDataset
    >>> features, labels = load_dataset("digits")
    >>> train_idx, test_idx = class_disjoint_split(labels, [0, 1, 2, 3, 4])
    >>> train_set = TensorDataset(features[train_idx], labels[train_idx])
    >>> len(train_set) + len(test_idx) == len(labels)
    True

Files on disk (IDX, images, ``.npy`` embeddings, text pairs) are read by the loaders of the submodules;
``load_dataset(name, root=...)`` reaches the ones that give ``(features, labels)`` tensors by name. Optional
packages (Pillow for images) are imported only by the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import Tensor

from .._validation import close_matches_hint, message
from . import transforms
from .digits import load_digits
from .embeddings import EmbeddingDataset, load_embeddings
from .idx import FASHION_MNIST_CLASSES, Split, load_fashion_mnist, load_mnist, read_idx
from .images import IMAGE_EXTENSIONS, ImageCSVDataset, ImageFolderDataset, load_image
from .newsgroups import NEWSGROUPS, NewsgroupsCorpus, load_20newsgroups, parse_post
from .root import DATA_ENV_VAR, resolve_data_root
from .splits import class_disjoint_kfold, class_disjoint_split, class_halves_split, split_by_classes
from .text_pairs import TextPair, TextPairDataset, load_sts_benchmark, read_text_pairs
from .views import noisy_view
from .vocabulary import PAD_ID, UNK_ID, PaddedItems, Vocabulary, pad_items, pad_labeled_items

__all__ = [
    "load_digits",
    "load_dataset",
    "DATASET_NAMES",
    "class_disjoint_split",
    "split_by_classes",
    "class_halves_split",
    "class_disjoint_kfold",
    "noisy_view",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "Split",
    "DATA_ENV_VAR",
    "resolve_data_root",
    "load_image",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageCSVDataset",
    "transforms",
    "load_embeddings",
    "EmbeddingDataset",
    "TextPair",
    "TextPairDataset",
    "read_text_pairs",
    "load_sts_benchmark",
    "NEWSGROUPS",
    "NewsgroupsCorpus",
    "load_20newsgroups",
    "parse_post",
    "Vocabulary",
    "PaddedItems",
    "pad_items",
    "pad_labeled_items",
    "PAD_ID",
    "UNK_ID",
]

_Root = str | os.PathLike[str] | None


def _digits(root: _Root, split: str | None) -> tuple[Tensor, Tensor]:
    if split is not None:
        raise ValueError(message("load_dataset", "split", "None for 'digits' (it has no official splits)", split))
    return load_digits()


def _mnist(root: _Root, split: str | None) -> tuple[Tensor, Tensor]:
    return load_mnist(root, "train" if split is None else split)


def _fashion_mnist(root: _Root, split: str | None) -> tuple[Tensor, Tensor]:
    return load_fashion_mnist(root, "train" if split is None else split)


_LOADERS: dict[str, Callable[[_Root, str | None], tuple[Tensor, Tensor]]] = {
    "digits": _digits,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
}

#: the names :func:`load_dataset` accepts.
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, *, root: _Root = None, split: str | None = None) -> tuple[Tensor, Tensor]:
    """Load a data set by name as ``(features, labels)``.

    * ``"digits"``: ``(1797, 64)`` in ``[0, 1]``, no files (bundled with scikit-learn, :func:`load_digits`);
    * ``"mnist"``: ``(N, 1, 28, 28)`` in ``[0, 1]`` from IDX files under ``root`` (:func:`load_mnist`);
    * ``"fashion_mnist"``: the same from Fashion-MNIST's IDX files (:func:`load_fashion_mnist`).

    Args:
        name: one of :data:`DATASET_NAMES`.
        root: the data folder for data sets read from files (ignored by ``"digits"``); None for
            :func:`resolve_data_root`'s default (``$DMLKIT_DATA``, else ``../shared/data``).
        split: ``"train"`` or ``"test"`` for data sets with official splits (None means ``"train"``); must be
            None for ``"digits"``.

    Raises:
        KeyError: for an unknown name, with close-match suggestions.
        ValueError: a split the data set does not have.
        FileNotFoundError, CorruptFileError: from the file loaders.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        hint = close_matches_hint(name, _LOADERS)
        raise KeyError(f"Unknown dataset {name!r}.{hint} Known: {', '.join(sorted(_LOADERS))}.") from None
    return loader(root, split)
