"""Class-disjoint splits: the standard metric-learning protocol trains on some classes and tests on unseen ones.

Following Oh Song et al. (2016, "Deep Metric Learning via Lifted Structured Feature Embedding",
arXiv:1511.06452), the classes of a data set are partitioned and retrieval is measured on classes the model
never saw during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_labels, message

__all__ = ["split_by_classes", "class_disjoint_split"]


def _as_labels(owner: str, labels: Any) -> Tensor:
    tensor = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    check_labels(owner, tensor, int(tensor.shape[0]) if tensor.ndim else 0)
    return tensor


def _class_list(owner: str, arg: str, classes: Any) -> list[int]:
    values = classes.tolist() if isinstance(classes, Tensor) else classes
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(message(owner, arg, "a sequence of integer class labels", values))
    out: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(message(owner, arg, "a sequence of integer class labels", list(values)))
        out.append(value)
    if not out:
        raise ValueError(message(owner, arg, "a non-empty sequence of class labels", list(values)))
    if len(set(out)) != len(out):
        raise ValueError(message(owner, arg, "free of repeated classes", out))
    return out


def split_by_classes(labels: Tensor | Sequence[int], class_sets: Sequence[Sequence[int]]) -> list[Tensor]:
    """Indices of the samples whose label lies in each of several disjoint class sets.

    Args:
        labels: 1-D integer labels of the whole data set.
        class_sets: one or more non-empty, pairwise disjoint sequences of classes, each present in ``labels``.

    Returns:
        For each class set, a 1-D ``int64`` tensor of indices into ``labels``, in increasing order.

    Raises:
        ValueError: a class set is empty, repeats a class, shares a class with another set, or names a
            class absent from ``labels``.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
        >>> [idx.tolist() for idx in split_by_classes(labels, [[0], [1, 2]])]
        [[0, 3], [1, 2, 4, 5]]
    """
    owner = "split_by_classes"
    tensor = _as_labels(owner, labels)
    if isinstance(class_sets, (str, bytes)) or not isinstance(class_sets, Sequence) or not class_sets:
        raise ValueError(message(owner, "class_sets", "a non-empty sequence of class sets", class_sets))
    sets = [_class_list(owner, f"class_sets[{i}]", classes) for i, classes in enumerate(class_sets)]
    owner_of: dict[int, int] = {}
    for i, classes in enumerate(sets):
        for c in classes:
            if c in owner_of:
                rule = f"pairwise disjoint (class {c} is in sets {owner_of[c]} and {i})"
                raise ValueError(message(owner, "class_sets", rule, sets))
            owner_of[c] = i
    present = set(torch.unique(tensor).tolist())
    for i, classes in enumerate(sets):
        absent = [c for c in classes if c not in present]
        if absent:
            rule = f"classes present in `labels` ({_describe_classes(sorted(present))}); absent: {absent}"
            raise ValueError(message(owner, f"class_sets[{i}]", rule, classes))
    return [torch.nonzero(torch.isin(tensor, torch.tensor(classes, dtype=tensor.dtype))).flatten() for classes in sets]


def class_disjoint_split(
    labels: Tensor | Sequence[int],
    train_classes: Sequence[int],
    test_classes: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Train and test indices for a split in which no class appears on both sides.

    Args:
        labels: 1-D integer labels of the whole data set.
        train_classes: the classes to train on; non-empty and present in ``labels``.
        test_classes: the classes to test on; by default every class of ``labels`` not in ``train_classes``.

    Returns:
        ``(train_indices, test_indices)``, 1-D ``int64`` tensors into ``labels``.

    Raises:
        ValueError: as :func:`split_by_classes`, or when no class is left for testing.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> train, test = class_disjoint_split(labels, [0, 1])
        >>> train.tolist(), test.tolist()
        ([0, 1, 4, 5], [2, 3, 6, 7])
    """
    owner = "class_disjoint_split"
    tensor = _as_labels(owner, labels)
    train = _class_list(owner, "train_classes", train_classes)
    if test_classes is None:
        test = sorted(set(torch.unique(tensor).tolist()) - set(train))
        if not test:
            raise ValueError(message(owner, "train_classes", "a strict subset of the classes in `labels`", train))
    else:
        test = _class_list(owner, "test_classes", test_classes)
    train_idx, test_idx = split_by_classes(tensor, [train, test])
    return train_idx, test_idx


def _describe_classes(classes: list[int]) -> str:
    if len(classes) > 12:
        return f"{len(classes)} classes from {classes[0]} to {classes[-1]}"
    return ", ".join(str(c) for c in classes)
