"""dmlkit.indices against brute-force loops (tests/reference/triplet.py) and pytorch-metric-learning."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from dmlkit.indices import (
    all_pairs,
    all_triplets,
    check_indices_tuple,
    convert_to_pairs,
    convert_to_triplets,
    label_masks,
    pairs_to_triplets,
    random_triplets,
    ref_is_query,
    triplets_to_pairs,
)
from dmlkit.types import Pairs, Triplets
from tests.reference import triplet as ref

CPU = torch.device("cpu")


def _labels(seed: int, size: int, num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (size,), generator=g)


# (size, num_classes): many singletons, few classes, one class, one element, empty
LABEL_CASES = [(s, c, seed) for seed in range(3) for s, c in [(7, 3), (12, 2), (10, 8), (9, 1), (1, 1), (16, 5)]]


def _as_triplet_list(t: tuple[torch.Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


def _brute_pairs_to_triplets(a1: list, p: list, a2: list, n: list) -> list[tuple[int, int, int]]:
    return [(a, pos) + (neg,) for a, pos in zip(a1, p, strict=True) for b, neg in zip(a2, n, strict=True) if a == b]


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
def test_all_pairs_matches_brute_force(size: int, num_classes: int, seed: int) -> None:
    labels = _labels(seed, size, num_classes)
    got = all_pairs(labels)
    assert isinstance(got, Pairs)
    assert tuple(x.tolist() for x in got) == ref.all_pairs(labels.tolist())
    assert all(x.dtype == torch.long for x in got)


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
def test_all_pairs_with_reference_matches_brute_force(size: int, num_classes: int, seed: int) -> None:
    labels = _labels(seed, size, num_classes)
    ref_labels = _labels(seed + 100, size + 3, num_classes + 1)
    got = all_pairs(labels, ref_labels)
    assert tuple(x.tolist() for x in got) == ref.all_pairs(labels.tolist(), ref_labels.tolist())


def test_reference_equal_in_value_but_distinct_object_allows_self_pairs() -> None:
    labels = torch.tensor([0, 0, 1])
    assert ref_is_query(labels, None) and ref_is_query(labels, labels)
    assert not ref_is_query(labels, labels.clone())
    a1, p, _, _ = all_pairs(labels, labels.clone())
    assert list(zip(a1.tolist(), p.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
    a1, p, _, _ = all_pairs(labels, labels)
    assert list(zip(a1.tolist(), p.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_label_masks_shapes_and_values() -> None:
    labels = torch.tensor([3, 1, 3])
    ref_labels = torch.tensor([1, 3])
    pos, neg = label_masks(labels, ref_labels)
    assert pos.dtype == neg.dtype == torch.bool
    assert pos.tolist() == [[False, True], [True, False], [False, True]]
    assert neg.tolist() == [[True, False], [False, True], [True, False]]


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
def test_all_triplets_matches_brute_force_in_lexicographic_order(size: int, num_classes: int, seed: int) -> None:
    labels = _labels(seed, size, num_classes)
    got = all_triplets(labels)
    assert isinstance(got, Triplets)
    expected = ref.all_triplets(labels.tolist())
    assert _as_triplet_list(got) == expected
    assert expected == sorted(expected)
    assert all(x.dtype == torch.long for x in got)


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
def test_all_triplets_with_reference_matches_brute_force(size: int, num_classes: int, seed: int) -> None:
    labels = _labels(seed, size, num_classes)
    ref_labels = _labels(seed + 7, size + 2, num_classes + 1)
    got = all_triplets(labels, ref_labels)
    assert _as_triplet_list(got) == ref.all_triplets(labels.tolist(), ref_labels.tolist())


def test_one_class_gives_positives_only_and_no_triplets() -> None:
    labels = torch.zeros(5, dtype=torch.long)
    a1, p, a2, n = all_pairs(labels)
    assert a1.numel() == 20 and a2.numel() == 0 and n.numel() == 0
    assert all(t.numel() == 0 for t in all_triplets(labels))


def test_singletons_give_negatives_only_and_no_triplets() -> None:
    labels = torch.arange(5)
    a1, p, a2, n = all_pairs(labels)
    assert a1.numel() == 0 and a2.numel() == 20
    assert all(t.numel() == 0 for t in all_triplets(labels))


def test_empty_labels() -> None:
    labels = torch.empty(0, dtype=torch.long)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in all_pairs(labels))
    assert all(t.numel() == 0 and t.dtype == torch.long for t in all_triplets(labels))
    assert all(t.numel() == 0 for t in random_triplets(labels, t_per_anchor=3))


@pytest.mark.parametrize("seed", range(6))
def test_pairs_to_triplets_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # arbitrary, unsorted pairs with repeated anchors, as a miner might return them
    a1 = torch.randint(0, 6, (9,), generator=g)
    p = torch.randint(0, 6, (9,), generator=g)
    a2 = torch.randint(0, 6, (11,), generator=g)
    n = torch.randint(0, 6, (11,), generator=g)
    expected = _brute_pairs_to_triplets(a1.tolist(), p.tolist(), a2.tolist(), n.tolist())
    assert _as_triplet_list(pairs_to_triplets((a1, p, a2, n))) == expected
    assert _as_triplet_list(pairs_to_triplets((a1, p, a2, n), num_anchors=6)) == expected
    assert _as_triplet_list(convert_to_triplets((a1, p, a2, n), torch.zeros(6, dtype=torch.long))) == expected


def test_pairs_to_triplets_empty_sides() -> None:
    x = torch.tensor([0, 1])
    e = torch.empty(0, dtype=torch.long)
    for pairs in [(e, e, x, x), (x, x, e, e), (e, e, e, e)]:
        out = pairs_to_triplets(pairs)
        assert isinstance(out, Triplets) and all(t.numel() == 0 for t in out)
    # anchors that never meet
    assert all(t.numel() == 0 for t in pairs_to_triplets((torch.tensor([0]), torch.tensor([1]), x + 2, x)))


def test_pairs_to_triplets_of_all_pairs_is_all_triplets() -> None:
    labels = _labels(3, 14, 4)
    assert _as_triplet_list(pairs_to_triplets(all_pairs(labels))) == _as_triplet_list(all_triplets(labels))


def test_convert_to_pairs() -> None:
    labels = _labels(1, 8, 3)
    assert tuple(x.tolist() for x in convert_to_pairs(None, labels)) == ref.all_pairs(labels.tolist())
    ref_labels = _labels(2, 5, 3)
    assert tuple(x.tolist() for x in convert_to_pairs(None, labels, ref_labels)) == ref.all_pairs(
        labels.tolist(), ref_labels.tolist()
    )
    pairs = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4]), torch.tensor([5]))
    out = convert_to_pairs(pairs, labels)
    assert isinstance(out, Pairs) and all(x is y for x, y in zip(out, pairs, strict=True))
    a, p, n = torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), torch.tensor([2, 3, 2])
    out = convert_to_pairs((a, p, n), labels)
    assert [x.tolist() for x in out] == [a.tolist(), p.tolist(), a.tolist(), n.tolist()]
    assert [x.tolist() for x in triplets_to_pairs((a, p, n))] == [x.tolist() for x in out]


def test_convert_to_triplets() -> None:
    labels = _labels(4, 10, 3)
    assert _as_triplet_list(convert_to_triplets(None, labels)) == ref.all_triplets(labels.tolist())
    ref_labels = _labels(5, 6, 3)
    assert _as_triplet_list(convert_to_triplets(None, labels, ref_labels)) == ref.all_triplets(
        labels.tolist(), ref_labels.tolist()
    )
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    out = convert_to_triplets(t, labels)
    assert isinstance(out, Triplets) and all(x is y for x, y in zip(out, t, strict=True))
    g = torch.Generator().manual_seed(0)
    drawn = convert_to_triplets(None, labels, t_per_anchor=4, generator=g)
    assert drawn.anchors.numel() == 4 * 10


# --------------------------------------------------------------------------------------------- random triplets


def _assert_valid_triplets(t: Triplets, labels: torch.Tensor, ref_labels: torch.Tensor | None) -> None:
    refl = labels if ref_labels is None else ref_labels
    a, p, n = t
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert bool((labels[a] == refl[p]).all())
    assert bool((labels[a] != refl[n]).all())
    if ref_labels is None:
        assert bool((a != p).all())


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_random_triplets_valid_and_counted(size: int, num_classes: int, seed: int, with_ref: bool) -> None:
    labels = _labels(seed, size, num_classes)
    ref_labels = _labels(seed + 50, size + 4, num_classes) if with_ref else None
    k = 5
    out = random_triplets(labels, ref_labels, t_per_anchor=k, generator=torch.Generator().manual_seed(seed))
    _assert_valid_triplets(out, labels, ref_labels)
    pos, neg = label_masks(labels, ref_labels)
    eligible = [i for i in range(size) if bool(pos[i].any()) and bool(neg[i].any())]
    assert Counter(out.anchors.tolist()) == {i: k for i in eligible}


def test_random_triplets_reproducible_with_generator() -> None:
    labels = _labels(0, 20, 4)
    draws = [random_triplets(labels, t_per_anchor=7, generator=torch.Generator().manual_seed(123)) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*draws, strict=True))
    other = random_triplets(labels, t_per_anchor=7, generator=torch.Generator().manual_seed(124))
    assert not all(torch.equal(x, y) for x, y in zip(draws[0], other, strict=True))


def test_random_triplets_draws_every_positive_and_negative_uniformly() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    k = 6000
    a, p, n = random_triplets(labels, t_per_anchor=k, generator=torch.Generator().manual_seed(0))
    first = a == 0
    pos_counts = Counter(p[first].tolist())
    neg_counts = Counter(n[first].tolist())
    assert set(pos_counts) == {1, 2, 3} and set(neg_counts) == {4, 5, 6}
    for counts in (pos_counts, neg_counts):
        for c in counts.values():
            assert abs(c - k / 3) < 0.1 * k / 3


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "all", None])
def test_random_triplets_rejects_bad_count(bad: object) -> None:
    with pytest.raises(ValueError, match=re.escape("random_triplets: `t_per_anchor` must be a positive integer")):
        random_triplets(torch.tensor([0, 0, 1]), t_per_anchor=bad)  # type: ignore[arg-type]


def test_random_triplets_message_does_not_offer_all() -> None:
    with pytest.raises(ValueError) as info:
        random_triplets(torch.tensor([0, 0, 1]), t_per_anchor="all")  # type: ignore[arg-type]
    assert "all" not in str(info.value).split(", got")[0]


# --------------------------------------------------------------------------------------------- check_indices_tuple


def _check(t: object, num_query: int = 6, num_ref: int = 6) -> tuple[torch.Tensor, ...] | None:
    return check_indices_tuple("Owner", t, num_query, num_ref, CPU)


def test_check_indices_tuple_accepts_and_converts() -> None:
    assert _check(None) is None
    t = (torch.tensor([0, 1], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int16), torch.tensor([5, 5]))
    out = _check(t)
    assert out is not None and len(out) == 3 and all(x.dtype == torch.long for x in out)
    assert [x.tolist() for x in out] == [[0, 1], [1, 0], [5, 5]]
    pairs = [torch.tensor([0]), torch.tensor([1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    out = _check(pairs)
    assert out is not None and len(out) == 4
    empty = torch.empty(0, dtype=torch.long)
    assert _check((empty, empty, empty)) is not None


def test_check_indices_tuple_wrong_length() -> None:
    x = torch.tensor([0])
    expected = (
        "Owner: `indices_tuple` must be None, a 3-tuple (anchors, positives, negatives) or a 4-tuple "
        "(anchors_pos, positives, anchors_neg, negatives), got 'tuple'."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        _check((x, x))
    with pytest.raises(ValueError, match=re.escape(expected)):
        _check((x,) * 5)
    with pytest.raises(ValueError, match=re.escape("got 'Tensor'.")):
        _check(torch.zeros(3, 2, dtype=torch.long))


def test_check_indices_tuple_float_tensor() -> None:
    x = torch.tensor([0, 1])
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Owner: `indices_tuple[2]` must be a 1-D integer tensor, got 'tensor of shape (2,), torch.float32'."
        ),
    ):
        _check((x, x, x.float()))
    with pytest.raises(
        TypeError,
        match=re.escape("`indices_tuple[0]` must be a 1-D integer tensor, got 'tensor of shape (2,), torch.bool'"),
    ):
        _check((x.bool(), x, x))
    with pytest.raises(TypeError, match=re.escape("`indices_tuple[1]` must be a 1-D integer tensor, got 'list'")):
        _check((x, [0, 1], x))
    with pytest.raises(TypeError, match=re.escape("got 'tensor of shape (1, 2), torch.int64'")):
        _check((x, x, x.unsqueeze(0)))


def test_check_indices_tuple_out_of_range() -> None:
    x = torch.tensor([0, 1])
    with pytest.raises(
        ValueError, match=re.escape("Owner: `indices_tuple[1]` must be indices in [0, 6), got 'values from 5 to 6'.")
    ):
        _check((x, x + 5, x))
    with pytest.raises(
        ValueError, match=re.escape("`indices_tuple[0]` must be indices in [0, 6), got 'values from -1")
    ):
        _check((x - 1, x, x))
    # anchors index the query batch, positives and negatives the reference set
    with pytest.raises(ValueError, match=re.escape("`indices_tuple[0]` must be indices in [0, 2)")):
        _check((x + 1, x, x), num_query=2, num_ref=10)
    assert _check((x, x + 8, x + 8), num_query=2, num_ref=10) is not None
    with pytest.raises(ValueError, match=re.escape("`indices_tuple[2]` must be indices in [0, 2)")):
        _check((x, x, x + 1, x), num_query=2, num_ref=10)
    with pytest.raises(ValueError, match=re.escape("`indices_tuple[3]` must be indices in [0, 10)")):
        _check((x, x, x, x + 9), num_query=2, num_ref=10)


def test_check_indices_tuple_mismatched_lengths() -> None:
    x = torch.tensor([0, 1])
    with pytest.raises(
        ValueError, match=re.escape("Owner: `indices_tuple` must be three tensors of equal length, got [2, 2, 1].")
    ):
        _check((x, x, x[:1]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Owner: `indices_tuple` must be pairs (a1, p) and (a2, n) of matching lengths, got [2, 1, 2, 2]."
        ),
    ):
        _check((x, x[:1], x, x))
    # positive and negative pair lists may differ in length
    assert _check((x, x, x[:1], x[:1])) is not None


# --------------------------------------------------------------------------------------------- pytorch-metric-learning


@pytest.mark.parametrize("size,num_classes,seed", LABEL_CASES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_equal_to_pml(size: int, num_classes: int, seed: int, with_ref: bool) -> None:
    lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")
    labels = _labels(seed, size, num_classes)
    ref_labels = _labels(seed + 9, size + 1, num_classes) if with_ref else None

    def same(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...]) -> None:
        assert len(ours) == len(theirs)
        for x, y in zip(ours, theirs, strict=True):
            assert x.tolist() == y.tolist()

    same(all_pairs(labels, ref_labels), lmu.get_all_pairs_indices(labels, ref_labels))
    same(all_triplets(labels, ref_labels), lmu.get_all_triplets_indices(labels, ref_labels))
    same(convert_to_pairs(None, labels, ref_labels), lmu.convert_to_pairs(None, labels, ref_labels))
    t = lmu.get_all_triplets_indices(labels, ref_labels)
    same(convert_to_pairs(t, labels, ref_labels), lmu.convert_to_pairs(t, labels, ref_labels))
    pairs = lmu.get_all_pairs_indices(labels, ref_labels)
    same(convert_to_triplets(pairs, labels, ref_labels), lmu.convert_to_triplets(pairs, labels, ref_labels))
    # a subset of the pairs, in scrambled order, as a pair miner would return
    g = torch.Generator().manual_seed(seed)
    keep_p = torch.randperm(pairs[0].numel(), generator=g)[: max(1, pairs[0].numel() // 2)]
    keep_n = torch.randperm(pairs[2].numel(), generator=g)[: max(1, pairs[2].numel() // 2)]
    sub = (pairs[0][keep_p], pairs[1][keep_p], pairs[2][keep_n], pairs[3][keep_n])
    same(convert_to_triplets(sub, labels, ref_labels), lmu.convert_to_triplets(sub, labels, ref_labels))
