from __future__ import annotations

import pytest
import torch

from dmlkit.data import class_disjoint_kfold, class_disjoint_split, class_halves_split, split_by_classes

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


# --- Musgrave et al. (2020) protocol: class halves and class-disjoint k-fold --------------------------------------


def _naive_groups(classes: list[int], n_splits: int) -> list[list[int]]:
    """Contiguous runs of the class list; the first ``len % n_splits`` runs hold one class more."""
    base, extra = divmod(len(classes), n_splits)
    groups, start = [], 0
    for k in range(n_splits):
        size = base + (1 if k < extra else 0)
        groups.append(classes[start : start + size])
        start += size
    return groups


def test_class_halves_split_matches_the_protocol() -> None:
    labels = torch.arange(1, 38).repeat_interleave(2)  # 37 classes numbered 1-37, as the pet breeds
    trainval, test = class_halves_split(labels)
    assert sorted(set(labels[trainval].tolist())) == list(range(1, 19))
    assert sorted(set(labels[test].tolist())) == list(range(19, 38))
    assert sorted(trainval.tolist() + test.tolist()) == list(range(74))
    trainval, test = class_halves_split(LABELS)  # classes 0..4: 0, 1 | 2, 3, 4
    assert trainval.tolist() == _naive(LABELS.tolist(), [0, 1]) and test.tolist() == _naive(LABELS.tolist(), [2, 3, 4])
    with pytest.raises(ValueError, match=r"^class_halves_split: `labels` must be labels of at least two classes, "):
        class_halves_split(torch.tensor([3, 3, 3]))


@pytest.mark.parametrize(("num_classes", "n_splits", "seed"), [(5, 2, None), (10, 4, None), (13, 4, 7), (4, 4, 0)])
def test_kfold_invariants(num_classes: int, n_splits: int, seed: int | None) -> None:
    rng = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (200,), generator=rng) * 3 + 10  # sparse class ids
    folds = list(class_disjoint_kfold(labels, n_splits, seed=seed))
    assert len(folds) == n_splits
    validated: list[int] = []
    val_class_sets = []
    for train, val in folds:
        assert train.dtype == val.dtype == torch.int64
        assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
        assert sorted(train.tolist() + val.tolist()) == list(range(200))
        train_classes, val_classes = set(labels[train].tolist()), set(labels[val].tolist())
        assert train_classes.isdisjoint(val_classes) and val_classes
        validated += val.tolist()
        val_class_sets.append(sorted(val_classes))
    assert sorted(validated) == list(range(200))  # every sample validated exactly once
    all_classes = sorted(set(labels.tolist()))
    assert sorted(c for s in val_class_sets for c in s) == all_classes  # every class in exactly one fold
    sizes = [len(s) for s in val_class_sets]
    assert max(sizes) - min(sizes) <= 1
    if seed is None:
        assert val_class_sets == _naive_groups(all_classes, n_splits)


def test_kfold_seed_shuffles_reproducibly() -> None:
    labels = torch.arange(20).repeat(3)

    def val_classes(seed: int | None) -> list[list[int]]:
        return [sorted(set(labels[v].tolist())) for _, v in class_disjoint_kfold(labels, 4, seed=seed)]

    assert val_classes(3) == val_classes(3)
    assert val_classes(3) != val_classes(4)
    assert val_classes(3) != val_classes(None)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()
    assert val_classes(3) == [sorted(g) for g in _naive_groups(perm, 4)]


def test_kfold_default_is_four_folds_and_accepts_lists() -> None:
    folds = list(class_disjoint_kfold(list(range(8)) * 2))
    assert [v.tolist() for _, v in folds] == [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]]


def test_kfold_errors_are_raised_before_iterating() -> None:
    with pytest.raises(ValueError, match=r"^class_disjoint_kfold: `n_splits` must be at most the number of classes "
                                         r"in `labels` \(5\), got 6\.$"):  # fmt: skip
        class_disjoint_kfold(LABELS, 6)
    with pytest.raises(ValueError, match=r"^class_disjoint_kfold: `n_splits` must be an integer >= 2, got 1\.$"):
        class_disjoint_kfold(LABELS, 1)
    with pytest.raises(TypeError, match=r"`n_splits` must be an integer, got 2\.0\."):
        class_disjoint_kfold(LABELS, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`seed` must be an integer, got '1'\."):
        class_disjoint_kfold(LABELS, 2, seed="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D tensor"):
        class_disjoint_kfold(LABELS.view(2, 5), 2)
