"""Data sets, class-disjoint splits and random views for instance discrimination (layer 5).

A data set is a pair ``(features, labels)`` of tensors; wrap a split in ``torch.utils.data.TensorDataset``:

Example:
    >>> from torch.utils.data import TensorDataset
    >>> features, labels = load_dataset("digits")
    >>> train_idx, test_idx = class_disjoint_split(labels, [0, 1, 2, 3, 4])
    >>> train_set = TensorDataset(features[train_idx], labels[train_idx])
    >>> len(train_set) + len(test_idx) == len(labels)
    True
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .._validation import close_matches_hint
from .digits import load_digits
from .splits import class_disjoint_split, split_by_classes
from .views import noisy_view

__all__ = ["load_digits", "load_dataset", "DATASET_NAMES", "class_disjoint_split", "split_by_classes", "noisy_view"]

_LOADERS: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {"digits": load_digits}

#: the names :func:`load_dataset` accepts.
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str) -> tuple[Tensor, Tensor]:
    """Load a data set by name as ``(features, labels)``.

    Raises:
        KeyError: for an unknown name, with close-match suggestions.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        hint = close_matches_hint(name, _LOADERS)
        raise KeyError(f"Unknown dataset {name!r}.{hint} Known: {', '.join(sorted(_LOADERS))}.") from None
    return loader()
