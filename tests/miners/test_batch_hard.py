"""BatchHardMiner against brute-force loops (tests/reference/miners.py), invariants and PML equality."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.batch_easy_hard import BatchEasyHardMiner
from dmlkit.miners.batch_hard import BatchHardMiner
from dmlkit.types import Triplets
from tests.reference import miners as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, distance_matrix, to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, str, dict]] = {
    "lp": (LpDistance, LP, "LpDistance", {}),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        DistanceSpec("lp", power=2, normalize=False),
        "LpDistance",
        {"normalize_embeddings": False, "power": 2},
    ),
    "cosine": (CosineSimilarity, COSINE, "CosineSimilarity", {}),
}


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _as_list(t: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_brute_force(distance: str, with_ref: bool) -> None:
    factory, spec, _, _ = DISTANCES[distance]
    for seed in range(4):
        emb, labels = _batch(seed)
        ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
        out = BatchHardMiner(distance=factory())(*((emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)))
        assert isinstance(out, Triplets)
        mat = distance_matrix(to_lists(emb), to_lists(ref_emb), spec)
        expected = ref.batch_hard(mat, labels.tolist(), spec.is_similarity, ref_labels.tolist() if with_ref else None)
        assert _as_list(out) == expected


def test_hand_computed_example() -> None:
    emb = torch.tensor([[0.0], [1.0], [4.5], [0.5], [2.0], [5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    out = BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(emb, labels)
    # anchor 0: farthest positive 2 (4.5), closest negative 3 (0.5); anchor 4 (at 2): positives 3 (1.5), 5 (3)
    assert _as_list(out) == [(0, 2, 3), (1, 2, 3), (2, 0, 5), (3, 5, 0), (4, 5, 1), (5, 3, 2)]


def test_ties_go_to_the_lowest_index() -> None:
    emb = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [-2.0]])
    out = BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(emb, torch.tensor([0, 0, 0, 1, 1]))
    # anchor 0: positives 1 and 2 both at 1, negatives 3 and 4 both at 2
    assert _as_list(out)[0] == (0, 1, 3)


def test_equals_batch_easy_hard_with_hard_hard() -> None:
    for seed in range(3):
        emb, labels = _batch(seed, n=20, classes=5)
        a, p, n = BatchHardMiner()(emb, labels)
        a1, p1, a2, n1 = BatchEasyHardMiner("hard", "hard")(emb, labels)
        assert torch.equal(a, a1) and torch.equal(p, p1) and torch.equal(n, n1)


def test_ranges_restrict_the_candidates() -> None:
    emb, labels = _batch(4, n=20, classes=4)
    mat = LpDistance()(emb)
    a, p, n = BatchHardMiner(allowed_pos_range=(0.0, 1.0), allowed_neg_range=(0.9, 2.0))(emb, labels)
    assert a.numel() > 0
    assert bool((mat[a, p] <= 1.0).all()) and bool((mat[a, n] >= 0.9).all())
    expected = BatchEasyHardMiner("hard", "hard", (0.0, 1.0), (0.9, 2.0))(emb, labels)
    assert torch.equal(p, expected.positives) and torch.equal(n, expected.negatives)


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        a, p, n = BatchHardMiner()(*((emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)))
        assert a.dtype == p.dtype == n.dtype == torch.long
        assert bool((labels[a] == ref_labels[p]).all()) and bool((labels[a] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a != p).all())
        assert a.tolist() == sorted(set(a.tolist()))


def test_single_class_and_singletons_give_nothing() -> None:
    emb = _batch(0)[0]
    for labels in (torch.zeros(12, dtype=torch.long), torch.arange(12)):
        assert all(t.numel() == 0 and t.dtype == torch.long for t in BatchHardMiner()(emb, labels))


def test_invalid_range_is_rejected() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "BatchHardMiner: `allowed_pos_range` must be None or a (low, high) pair of numbers with low <= high, "
            "got (1, 0)."
        ),
    ):
        BatchHardMiner(allowed_pos_range=(1, 0))


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_equal_to_pml(distance: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, _, pml_name, kwargs = DISTANCES[distance]
    ours = BatchHardMiner(distance=factory())
    theirs = pml_miners.BatchHardMiner(distance=getattr(pml_distances, pml_name)(**kwargs))
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
            for x, y in zip(ours(*args), theirs(*args), strict=True):
                assert torch.equal(x, y)


def test_ranges_equal_to_pml() -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    ours = BatchHardMiner(allowed_pos_range=(0.0, 1.0), allowed_neg_range=(0.9, 2.0))
    theirs = pml_miners.BatchHardMiner(allowed_pos_range=(0.0, 1.0), allowed_neg_range=(0.9, 2.0))
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        for x, y in zip(ours(emb, labels), theirs(emb, labels), strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("with_ref", [False, True])
def test_mined_triplets_fed_to_the_triplet_loss_match_pml(with_ref: bool) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        extra = _batch(seed + 70, n=9, classes=4) if with_ref else ()
        ours = TripletMarginLoss(margin=0.5)(emb, labels, BatchHardMiner()(emb, labels, *extra), *extra)
        mined = pml_miners.BatchHardMiner()(emb, labels, *extra)
        theirs = pml_losses.TripletMarginLoss(margin=0.5)(emb, labels, mined, *extra)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
