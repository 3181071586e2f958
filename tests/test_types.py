"""dmlkit.types: index tuples that are also PML's plain tuples, and Terms validation."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from dmlkit.types import Neighbors, Pairs, TermKind, Terms, Triplets, empty_index


def test_triplets_are_plain_3_tuples() -> None:
    a, p, n = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 2])
    t = Triplets(a, p, n)
    assert isinstance(t, tuple) and len(t) == 3
    x, y, z = t
    assert x is a and y is p and z is n
    assert t[0] is a and t[-1] is n
    assert t.anchors is a and t.positives is p and t.negatives is n
    assert t.num_triplets == 2
    assert tuple(t) == (a, p, n)


def test_pairs_are_plain_4_tuples() -> None:
    a1, p, a2, n = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0, 0, 1]), torch.tensor([2, 3, 2])
    pairs = Pairs(a1, p, a2, n)
    assert isinstance(pairs, tuple) and len(pairs) == 4
    w, x, y, z = pairs
    assert (w, x, y, z) == (a1, p, a2, n)
    assert pairs[:2] == (a1, p) and pairs[2:] == (a2, n)
    assert pairs.anchors_pos is a1 and pairs.positives is p and pairs.anchors_neg is a2 and pairs.negatives is n
    assert pairs.num_pos == 2 and pairs.num_neg == 3


def test_term_kinds_are_pml_reduction_types() -> None:
    assert [k.value for k in TermKind] == ["element", "pos_pair", "neg_pair", "triplet", "already_reduced"]
    assert TermKind("triplet") is TermKind.TRIPLET
    assert TermKind.POS_PAIR == "pos_pair"


def test_terms_valid() -> None:
    values = torch.tensor([0.5, 0.0, 2.0])
    terms = Terms(values, torch.tensor([0, 1, 1]), TermKind.TRIPLET, divisor=4)
    assert terms.values is values and terms.kind is TermKind.TRIPLET and terms.divisor == 4
    assert not terms.is_empty
    assert Terms(torch.zeros(0), empty_index()).is_empty
    assert Terms(torch.zeros(2), torch.arange(2)).kind is TermKind.ELEMENT


def test_terms_reduced() -> None:
    t = Terms.reduced(torch.tensor([3.0]))
    assert t.kind is TermKind.ALREADY_REDUCED and t.anchors is None and t.values.shape == ()
    assert t.values.item() == 3.0 and not t.is_empty
    assert Terms.reduced(torch.tensor(0.0)).values.item() == 0.0


def test_terms_is_frozen() -> None:
    t = Terms(torch.zeros(2), torch.arange(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.values = torch.ones(2)  # type: ignore[misc]


def test_terms_rejects_non_1d_values() -> None:
    with pytest.raises(ValueError, match=re.escape("Terms: `values` must be 1-D, got shape (2, 2).")):
        Terms(torch.zeros(2, 2), torch.arange(4))
    with pytest.raises(ValueError, match=re.escape("Terms: `values` must be 1-D, got shape ().")):
        Terms(torch.tensor(1.0), torch.tensor(0))


def test_terms_rejects_missing_or_mismatched_anchors() -> None:
    with pytest.raises(ValueError, match=re.escape("Terms: `anchors` must have the shape of `values` (3,), got None.")):
        Terms(torch.zeros(3))
    with pytest.raises(ValueError, match=re.escape("Terms: `anchors` must have the shape of `values` (3,), got (2,).")):
        Terms(torch.zeros(3), torch.arange(2))


def test_already_reduced_must_hold_one_number() -> None:
    with pytest.raises(
        ValueError, match=re.escape("Terms: already-reduced values must hold one number, got shape (2,).")
    ):
        Terms(torch.zeros(2), None, TermKind.ALREADY_REDUCED)


def test_reduced_rejects_wrong_size_with_terms_message() -> None:
    with pytest.raises(
        ValueError, match=re.escape("Terms: already-reduced values must hold one number, got shape (2,).")
    ):
        Terms.reduced(torch.zeros(2))


def test_neighbors() -> None:
    d, i = torch.rand(3, 2), torch.randint(0, 5, (3, 2))
    nb = Neighbors(d, i)
    dist, idx = nb
    assert dist is d and idx is i and nb.distances is d and nb.indices is i


def test_empty_index() -> None:
    e = empty_index()
    assert e.dtype == torch.long and e.shape == (0,)
