from __future__ import annotations

import pytest
import torch

from dmlkit.data import class_disjoint_split, split_by_classes

LABELS = torch.tensor([3, 0, 1, 2, 3, 1, 0, 2, 2, 4])


def _naive(labels: list[int], classes: list[int]) -> list[int]:
    return [i for i, label in enumerate(labels) if label in classes]


@pytest.mark.parametrize("sets", [[[0], [1, 2]], [[3, 4], [0], [2]], [[0, 1, 2, 3, 4]]])
def test_split_by_classes_matches_naive_selection(sets: list[list[int]]) -> None:
    out = split_by_classes(LABELS, sets)
    assert [idx.tolist() for idx in out] == [_naive(LABELS.tolist(), s) for s in sets]
    assert all(idx.dtype == torch.int64 for idx in out)


def test_split_accepts_lists_and_numpy_labels() -> None:
    for labels in (LABELS.tolist(), LABELS.numpy()):
        train, test = class_disjoint_split(labels, [0, 1])
        assert train.tolist() == [1, 2, 5, 6] and test.tolist() == [0, 3, 4, 7, 8, 9]


def test_class_disjoint_split_default_test_is_the_complement() -> None:
    train, test = class_disjoint_split(LABELS, [0, 1])
    assert train.tolist() == _naive(LABELS.tolist(), [0, 1])
    assert test.tolist() == _naive(LABELS.tolist(), [2, 3, 4])
    assert set(train.tolist()).isdisjoint(test.tolist())


def test_class_disjoint_split_explicit_test_classes() -> None:
    train, test = class_disjoint_split(LABELS, [0], [4])
    assert train.tolist() == [1, 6] and test.tolist() == [9]


def test_overlapping_class_sets_are_rejected() -> None:
    with pytest.raises(
        ValueError,
        match=r"^split_by_classes: `class_sets` must be pairwise disjoint \(class 1 is in sets 0 and 1\), "
        r"got \[\[0, 1\], \[1, 2\]\]\.$",
    ):
        split_by_classes(LABELS, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"class 2 is in sets 0 and 1"):
        class_disjoint_split(LABELS, [0, 2], [2, 3])


def test_empty_class_set_is_rejected() -> None:
    expected = r"^class_disjoint_split: `train_classes` must be a non-empty sequence of class labels, got \[\]\.$"
    with pytest.raises(ValueError, match=expected):
        class_disjoint_split(LABELS, [])
    with pytest.raises(ValueError, match=r"`class_sets\[1\]` must be a non-empty sequence"):
        split_by_classes(LABELS, [[0], []])
    with pytest.raises(ValueError, match=r"`class_sets` must be a non-empty sequence of class sets"):
        split_by_classes(LABELS, [])


def test_absent_class_is_rejected() -> None:
    with pytest.raises(
        ValueError,
        match=r"^split_by_classes: `class_sets\[1\]` must be classes present in `labels` \(0, 1, 2, 3, 4\); "
        r"absent: \[7\], got \[2, 7\]\.$",
    ):
        split_by_classes(LABELS, [[0], [2, 7]])


def test_repeated_and_non_integer_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"`train_classes` must be free of repeated classes, got \[0, 0\]\."):
        class_disjoint_split(LABELS, [0, 0])
    with pytest.raises(TypeError, match=r"`train_classes` must be a sequence of integer class labels"):
        class_disjoint_split(LABELS, [0.5])
    with pytest.raises(TypeError, match=r"`train_classes` must be a sequence of integer class labels, got '01'\."):
        class_disjoint_split(LABELS, "01")  # type: ignore[arg-type]


def test_all_classes_for_training_leaves_nothing_to_test() -> None:
    with pytest.raises(ValueError, match=r"`train_classes` must be a strict subset of the classes in `labels`"):
        class_disjoint_split(LABELS, [0, 1, 2, 3, 4])


def test_bad_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D tensor"):
        split_by_classes(LABELS.view(2, 5), [[0]])
    with pytest.raises(TypeError, match=r"`labels` must be an integer tensor"):
        split_by_classes(LABELS.float(), [[0]])
