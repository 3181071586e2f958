"""MultiSimilarityMiner against brute-force loops (tests/reference/miners.py), invariants and PML equality."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.multi_similarity import MultiSimilarityMiner
from dmlkit.types import Pairs
from tests.reference import miners as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, distance_matrix, to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, str]] = {
    "cosine": (CosineSimilarity, COSINE, "CosineSimilarity"),
    "lp": (LpDistance, LP, "LpDistance"),
}
EPSILONS = [0.0, 0.1, 0.5]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _split(out: tuple[Tensor, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    a1, p, a2, n = (t.tolist() for t in out)
    return list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_brute_force(distance: str, epsilon: float, with_ref: bool) -> None:
    factory, spec, _ = DISTANCES[distance]
    miner = MultiSimilarityMiner(epsilon, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed)
        ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
        out = miner(emb, labels, ref_emb, ref_labels) if with_ref else miner(emb, labels)
        assert isinstance(out, Pairs)
        mat = distance_matrix(to_lists(emb), to_lists(ref_emb), spec)
        pos, neg = ref.multi_similarity(
            mat, labels.tolist(), epsilon, spec.is_similarity, ref_labels.tolist() if with_ref else None
        )
        # positives by anchor, then by increasing value (the oracle lists them by index; Python's sort is
        # stable); negatives by index
        assert _split(out) == (sorted(pos, key=lambda pair: (pair[0], mat[pair[0]][pair[1]])), neg)


def test_hand_computed_example() -> None:
    # cosine similarities: s01 .8, s02 .6, s03 0, s12 .96, s13 .6, s23 .8
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 1: positive .8 - .1 < hardest negative .96; negative .96 + .1 > easiest positive .8, .6 + .1 is not
    assert _split(MultiSimilarityMiner(0.1)(emb, labels)) == ([(1, 0), (2, 3)], [(1, 2), (2, 1)])
    # epsilon .25: every positive (.8 - .25 < .6) and every negative with .6 + .25 > .8, not s03 = 0
    assert _split(MultiSimilarityMiner(0.25)(emb, labels)) == (
        [(0, 1), (1, 0), (2, 3), (3, 2)],
        [(0, 2), (1, 2), (1, 3), (2, 0), (2, 1), (3, 1)],
    )


def test_default_distance_is_cosine() -> None:
    assert isinstance(MultiSimilarityMiner().distance, CosineSimilarity)
    assert isinstance(MultiSimilarityMiner(distance=DotProductSimilarity()).distance, DotProductSimilarity)


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a1, p, a2, n = MultiSimilarityMiner(0.2)(*args)
        assert all(t.dtype == torch.long for t in (a1, p, a2, n)) and a1.numel() and a2.numel()
        assert bool((labels[a1] == ref_labels[p]).all()) and bool((labels[a2] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a1 != p).all())
        pos, neg = _split((a1, p, a2, n))
        assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
        assert neg == sorted(neg)
        values = MultiSimilarityMiner(0.2).distance(emb, ref_emb)[a1, p]
        same_anchor = a1[1:] == a1[:-1]
        assert bool((a1[1:] >= a1[:-1]).all()) and bool((values[1:][same_anchor] >= values[:-1][same_anchor]).all())


def test_larger_epsilon_mines_a_superset() -> None:
    emb, labels = _batch(3, n=20, classes=4)
    small = [set(x) for x in _split(MultiSimilarityMiner(0.05)(emb, labels))]
    large = [set(x) for x in _split(MultiSimilarityMiner(0.3)(emb, labels))]
    assert small[0] < large[0] and small[1] < large[1]


def test_nothing_without_positive_or_negative_pairs() -> None:
    emb = _batch(0)[0]
    for labels in (torch.zeros(12, dtype=torch.long), torch.arange(12)):
        out = MultiSimilarityMiner(10.0)(emb, labels)
        assert all(t.numel() == 0 and t.dtype == torch.long for t in out)


def test_negative_epsilon_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("MultiSimilarityMiner: `epsilon` must be a number >= 0, got -0.1.")):
        MultiSimilarityMiner(epsilon=-0.1)


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_equal_to_pml_with_positives_in_the_same_order(distance: str, epsilon: float) -> None:
    """PML lists an anchor's pairs by increasing value (it sorts each row); our positives come that way too."""
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, _, pml_name = DISTANCES[distance]
    ours = MultiSimilarityMiner(epsilon, distance=factory())
    theirs = pml_miners.MultiSimilarityMiner(epsilon, distance=getattr(pml_distances, pml_name)())
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
            mine, other = ours(*args), theirs(*args)
            assert torch.equal(mine[0], other[0]) and torch.equal(mine[1], other[1])
            assert torch.equal(mine[2], other[2])  # the same negatives per anchor, by index here
            assert sorted(_split(mine)[1]) == sorted(_split(other)[1])


def test_mined_pairs_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ours = TripletMarginLoss(margin=0.3)(emb, labels, MultiSimilarityMiner(0.1)(emb, labels))
        mined = pml_miners.MultiSimilarityMiner(0.1)(emb, labels)
        theirs = pml_losses.TripletMarginLoss(margin=0.3)(emb, labels, mined)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_ref", [False, True])
def test_mined_pairs_fed_to_the_multi_similarity_loss_match_pml(with_ref: bool) -> None:
    module = pytest.importorskip("dmlkit.losses.multi_similarity", reason="dmlkit has no MultiSimilarityLoss")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        extra = _batch(seed + 70, n=9, classes=4) if with_ref else ()
        ours = module.MultiSimilarityLoss()(emb, labels, MultiSimilarityMiner(0.1)(emb, labels, *extra), *extra)
        mined = pml_miners.MultiSimilarityMiner(0.1)(emb, labels, *extra)
        theirs = pml_losses.MultiSimilarityLoss()(emb, labels, mined, *extra)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mined_pairs_fed_to_npairs_loss_match_pml() -> None:
    """NPairsLoss keeps the first mined pair of each class, so the order of the pairs sets its value."""
    from dmlkit.losses import NPairsLoss

    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(5):
        emb, labels = _batch(seed, n=33, d=16, classes=5)
        ours = NPairsLoss()(emb, labels, MultiSimilarityMiner(0.1)(emb, labels))
        theirs = pml_losses.NPairsLoss()(emb, labels, pml_miners.MultiSimilarityMiner(0.1)(emb, labels))
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
