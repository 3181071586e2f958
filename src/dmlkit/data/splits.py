"""Class-disjoint splits: the standard metric-learning protocol trains on some classes and tests on unseen ones.

Following Oh Song et al. (2016, "Deep Metric Learning via Lifted Structured Feature Embedding",
arXiv:1511.06452), the classes of a data set are partitioned and retrieval is measured on classes the model
never saw during training. Musgrave, Belongie and Lim (2020, "A Metric Learning Reality Check",
arXiv:2003.08505) add validation without touching the test classes: the first half of the classes is for
training and validation (:func:`class_halves_split`), cross-validated in class-disjoint folds
(:func:`class_disjoint_kfold`), and the second half is kept for the final test.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_labels, check_range, message

__all__ = ["split_by_classes", "class_disjoint_split", "class_halves_split", "class_disjoint_kfold"]


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


def class_halves_split(labels: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Indices of the first half of the classes (train + validation) and of the second half (test).

    The split of Musgrave, Belongie and Lim (2020, arXiv:2003.08505): the distinct labels are sorted, the
    first ``C // 2`` of the ``C`` classes go to training and validation, the other ``C - C // 2`` to the test
    (with 37 classes, classes 1-18 and 19-37 when they are numbered from 1).

    Args:
        labels: 1-D integer labels of the whole data set, with at least two distinct classes.

    Returns:
        ``(trainval_indices, test_indices)``, 1-D ``int64`` tensors into ``labels``, in increasing order.

    Raises:
        ValueError: ``labels`` has fewer than two classes.

    Example:
        >>> trainval, test = class_halves_split(torch.tensor([5, 1, 2, 9, 1, 5]))
        >>> trainval.tolist(), test.tolist()
        ([1, 2, 4], [0, 3, 5])
    """
    owner = "class_halves_split"
    tensor = _as_labels(owner, labels)
    classes = torch.unique(tensor)
    if classes.numel() < 2:
        raise ValueError(message(owner, "labels", "labels of at least two classes", classes.tolist()))
    first = torch.isin(tensor, classes[: classes.numel() // 2])
    return torch.nonzero(first).flatten(), torch.nonzero(~first).flatten()


def class_disjoint_kfold(
    labels: Tensor | Sequence[int], n_splits: int = 4, *, seed: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """K-fold cross-validation in which each fold validates on classes it does not train on.

    The protocol of Musgrave, Belongie and Lim (2020, "A Metric Learning Reality Check", arXiv:2003.08505,
    four folds): the classes are partitioned into ``n_splits`` groups of sizes differing by at most one; fold
    ``k`` validates on the samples of group ``k`` and trains on all the others. So the training and
    validation classes of a fold are disjoint, every sample is validated exactly once, and every class in
    exactly one fold.

    Args:
        labels: 1-D integer labels (typically of the train + validation half, see :func:`class_halves_split`).
        n_splits: the number of folds, ``>= 2`` and at most the number of classes.
        seed: None to group the sorted classes in contiguous runs (deterministic); an integer to shuffle the
            classes with ``torch.Generator().manual_seed(seed)`` first.

    Returns:
        An iterator over ``n_splits`` pairs ``(train_indices, val_indices)`` of 1-D ``int64`` tensors into
        ``labels``, in increasing order. The arguments are checked before the iterator is returned.

    Raises:
        ValueError: ``n_splits`` is below 2 or exceeds the number of classes.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        >>> [(train.tolist(), val.tolist()) for train, val in class_disjoint_kfold(labels, n_splits=2)]
        [([2, 3, 6, 7], [0, 1, 4, 5]), ([0, 1, 4, 5], [2, 3, 6, 7])]
    """
    owner = "class_disjoint_kfold"
    tensor = _as_labels(owner, labels)
    check_range(owner, "n_splits", n_splits, low=2, integer=True)
    if seed is not None:
        check_range(owner, "seed", seed, integer=True)
    classes = torch.unique(tensor)
    if n_splits > classes.numel():
        rule = f"at most the number of classes in `labels` ({classes.numel()})"
        raise ValueError(message(owner, "n_splits", rule, n_splits))
    if seed is not None:
        classes = classes[torch.randperm(classes.numel(), generator=torch.Generator().manual_seed(seed))]
    groups = torch.tensor_split(classes, n_splits)
    return _folds(tensor, groups)


def _folds(labels: Tensor, groups: tuple[Tensor, ...]) -> Iterator[tuple[Tensor, Tensor]]:
    for group in groups:
        held_out = torch.isin(labels, group)
        yield torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()


def _describe_classes(classes: list[int]) -> str:
    if len(classes) > 12:
        return f"{len(classes)} classes from {classes[0]} to {classes[-1]}"
    return ", ".join(str(c) for c in classes)
