"""pytorch-metric-learning import paths under dmlkit.utils behave like the originals."""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter

import pytest
import torch

from dmlkit.utils import loss_and_miner_utils as lmu

pml_lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")

NAMES = [
    "get_all_pairs_indices",
    "get_all_triplets_indices",
    "get_random_triplet_indices",
    "convert_to_pairs",
    "convert_to_triplets",
    "get_matches_and_diffs",
    "pos_pairs_from_tuple",
    "neg_pairs_from_tuple",
]


def _labels(seed: int, size: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (size,), generator=torch.Generator().manual_seed(seed))


CASES = [(seed, size, classes) for seed in range(3) for size, classes in [(9, 3), (12, 2), (8, 8), (6, 1), (1, 1)]]


def _same(ours: tuple, theirs: tuple) -> None:
    assert len(ours) == len(theirs)
    for x, y in zip(ours, theirs, strict=True):
        assert x.dtype == y.dtype, (x.dtype, y.dtype)
        assert x.tolist() == y.tolist()


def test_import_paths() -> None:
    from dmlkit.utils import loss_and_miner_utils

    assert loss_and_miner_utils is lmu
    assert importlib.import_module("dmlkit.utils.loss_and_miner_utils") is lmu
    assert set(NAMES) <= set(lmu.__all__)
    for name in NAMES:
        assert callable(getattr(lmu, name))


@pytest.mark.parametrize("name", NAMES)
def test_signatures_match_pml(name: str) -> None:
    ours = inspect.signature(getattr(lmu, name)).parameters
    theirs = inspect.signature(getattr(pml_lmu, name)).parameters
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].default == theirs[key].default, key


@pytest.mark.parametrize("seed,size,classes", CASES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_deterministic_helpers_equal_pml(seed: int, size: int, classes: int, with_ref: bool) -> None:
    labels = _labels(seed, size, classes)
    ref_labels = _labels(seed + 11, size + 2, classes) if with_ref else None
    _same(lmu.get_all_pairs_indices(labels, ref_labels), pml_lmu.get_all_pairs_indices(labels, ref_labels))
    _same(lmu.get_all_triplets_indices(labels, ref_labels), pml_lmu.get_all_triplets_indices(labels, ref_labels))
    _same(lmu.get_matches_and_diffs(labels, ref_labels), pml_lmu.get_matches_and_diffs(labels, ref_labels))
    _same(lmu.convert_to_pairs(None, labels, ref_labels), pml_lmu.convert_to_pairs(None, labels, ref_labels))
    triplets = pml_lmu.get_all_triplets_indices(labels, ref_labels)
    _same(lmu.convert_to_pairs(triplets, labels), pml_lmu.convert_to_pairs(triplets, labels))
    pairs = pml_lmu.get_all_pairs_indices(labels, ref_labels)
    _same(lmu.convert_to_pairs(pairs, labels), pml_lmu.convert_to_pairs(pairs, labels))
    _same(lmu.convert_to_triplets(pairs, labels), pml_lmu.convert_to_triplets(pairs, labels))
    _same(lmu.convert_to_triplets(triplets, labels), pml_lmu.convert_to_triplets(triplets, labels))
    _same(
        lmu.convert_to_triplets(None, labels, ref_labels, t_per_anchor="all"),
        pml_lmu.convert_to_triplets(None, labels, ref_labels, t_per_anchor="all"),
    )
    _same(lmu.pos_pairs_from_tuple(pairs), pml_lmu.pos_pairs_from_tuple(pairs))
    _same(lmu.neg_pairs_from_tuple(pairs), pml_lmu.neg_pairs_from_tuple(pairs))


def test_matches_and_diffs_are_uint8() -> None:
    labels = torch.tensor([0, 0, 1])
    matches, diffs = lmu.get_matches_and_diffs(labels)
    assert matches.dtype == diffs.dtype == torch.uint8
    assert matches.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert diffs.tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    # the same tensor passed as reference still means "the batch itself"
    assert lmu.get_matches_and_diffs(labels, labels)[0].tolist() == matches.tolist()
    assert lmu.get_matches_and_diffs(labels, labels.clone())[0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def _check_valid(triplets: tuple, labels: torch.Tensor, ref_labels: torch.Tensor | None) -> None:
    refl = labels if ref_labels is None else ref_labels
    a, p, n = triplets
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert bool((labels[a] == refl[p]).all()) and bool((labels[a] != refl[n]).all())
    if ref_labels is None:
        assert bool((a != p).all())


@pytest.mark.parametrize("seed,size,classes", CASES)
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("t_per_anchor", [None, 1, 4])
def test_random_triplets_have_pml_counts(
    seed: int, size: int, classes: int, with_ref: bool, t_per_anchor: int | None
) -> None:
    labels = _labels(seed, size, classes)
    ref_labels = _labels(seed + 5, size + 3, classes) if with_ref else None
    ours = lmu.get_random_triplet_indices(labels, ref_labels, t_per_anchor=t_per_anchor)
    theirs = pml_lmu.get_random_triplet_indices(labels, ref_labels, t_per_anchor=t_per_anchor)
    _check_valid(ours, labels, ref_labels)
    assert Counter(ours[0].tolist()) == Counter(theirs[0].tolist())


@pytest.mark.parametrize("with_ref", [False, True])
def test_convert_to_triplets_draws_100_per_anchor_by_default(with_ref: bool) -> None:
    labels = _labels(0, 10, 3)
    ref_labels = _labels(1, 7, 3) if with_ref else None
    ours = lmu.convert_to_triplets(None, labels, ref_labels)
    theirs = pml_lmu.convert_to_triplets(None, labels, ref_labels)
    _check_valid(ours, labels, ref_labels)
    assert Counter(ours[0].tolist()) == Counter(theirs[0].tolist())
    assert set(Counter(ours[0].tolist()).values()) == {100}


def test_random_triplets_follow_torch_global_seed() -> None:
    labels = _labels(2, 12, 3)
    torch.manual_seed(5)
    first = lmu.get_random_triplet_indices(labels, t_per_anchor=3)
    torch.manual_seed(5)
    second = lmu.get_random_triplet_indices(labels, t_per_anchor=3)
    _same(first, second)


def test_random_triplets_weights_are_not_supported() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(
        NotImplementedError,
        match=re.escape("get_random_triplet_indices: `weights` (weighted negative sampling) is not supported"),
    ):
        lmu.get_random_triplet_indices(labels, weights=torch.ones(4, 4))


def test_accuracy_calculator_path_and_signatures() -> None:
    from dmlkit.evaluation import AccuracyCalculator
    from dmlkit.utils import accuracy_calculator

    pml_ac = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    assert importlib.import_module("dmlkit.utils.accuracy_calculator").AccuracyCalculator is AccuracyCalculator
    assert accuracy_calculator.__all__ == ["AccuracyCalculator"]
    for method in ("__init__", "get_accuracy"):
        ours = inspect.signature(getattr(AccuracyCalculator, method)).parameters
        theirs = inspect.signature(getattr(pml_ac.AccuracyCalculator, method)).parameters
        # PML's parameters, in PML's order and with PML's defaults; dmlkit may add more after them.
        assert list(ours)[: len(theirs)] == list(theirs)
        for key in theirs:
            assert ours[key].default == theirs[key].default, (method, key)
