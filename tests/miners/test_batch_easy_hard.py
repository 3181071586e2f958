"""BatchEasyHardMiner against brute-force loops (tests/reference/miners.py), invariants and PML equality."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.batch_easy_hard import BatchEasyHardMiner, MiningStrategy
from dmlkit.types import Pairs
from tests.reference import miners as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, distance_matrix, to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, str]] = {
    "lp": (LpDistance, LP, "LpDistance"),
    "cosine": (CosineSimilarity, COSINE, "CosineSimilarity"),
}
# ranges that cut some but not all pairs, per distance
RANGES = {"lp": (0.4, 1.3), "cosine": (-0.4, 0.7)}
STRATEGIES = ["easy", "semihard", "hard", "all"]
VALID = [
    (pos, neg)
    for pos, neg in itertools.product(STRATEGIES, STRATEGIES)
    if not (pos == "semihard" and neg in ("semihard", "all")) and not (neg == "semihard" and pos == "all")
]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _split(out: tuple[Tensor, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    a1, p, a2, n = (t.tolist() for t in out)
    return list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))


def test_thirteen_valid_combinations() -> None:
    assert len(VALID) == 13


@pytest.mark.parametrize("pos_strategy,neg_strategy", VALID)
@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("with_range", [False, True])
def test_matches_brute_force(
    pos_strategy: str, neg_strategy: str, distance: str, with_ref: bool, with_range: bool
) -> None:
    factory, spec, _ = DISTANCES[distance]
    allowed = RANGES[distance] if with_range else None
    miner = BatchEasyHardMiner(pos_strategy, neg_strategy, allowed, allowed, distance=factory())
    for seed in range(2):
        emb, labels = _batch(seed)
        ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
        out = miner(emb, labels, ref_emb, ref_labels) if with_ref else miner(emb, labels)
        assert isinstance(out, Pairs)
        mat = distance_matrix(to_lists(emb), to_lists(ref_emb), spec)
        expected = ref.batch_easy_hard(
            mat,
            labels.tolist(),
            pos_strategy,
            neg_strategy,
            spec.is_similarity,
            ref_labels.tolist() if with_ref else None,
            allowed,
            allowed,
        )
        assert _split(out) == expected


def test_hand_computed_example() -> None:
    emb = torch.tensor([[0.0], [1.0], [4.5], [0.5], [2.0], [5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    lp = LpDistance(normalize_embeddings=False)

    def triplets(pos: str, neg: str, **kwargs: object) -> list[tuple[int, int, int]]:
        a1, p, a2, n = BatchEasyHardMiner(pos, neg, distance=lp, **kwargs)(emb, labels)  # type: ignore[arg-type]
        assert torch.equal(a1, a2)
        return list(zip(a1.tolist(), p.tolist(), n.tolist(), strict=True))

    # anchor 1 (at 1.0): positives 0 (d 1), 2 (d 3.5); negatives 3 (0.5), 4 (1), 5 (4)
    assert triplets("hard", "hard")[1] == (1, 2, 3)
    assert triplets("easy", "easy")[1] == (1, 0, 5)
    assert triplets("easy", "hard")[1] == (1, 0, 3)
    # semihard negative: the closest negative farther than the easy positive (d > 1): 5, not 4 (d == 1)
    assert triplets("easy", "semihard")[1] == (1, 0, 5)
    # semihard positive: the farthest positive closer than the hard negative (d < 0.5): none for anchor 1
    assert all(a != 1 for a, _, _ in triplets("semihard", "hard"))
    # with the easy negative (5, d 4) the farthest positive closer than it is 2 (d 3.5)
    assert triplets("semihard", "easy")[1] == (1, 2, 5)
    # ranges: positives with d in [0, 2] and negatives with d in [0.8, 5]
    assert triplets("hard", "hard", allowed_pos_range=(0, 2), allowed_neg_range=(0.8, 5))[1] == (1, 0, 4)


def test_semihard_picks_are_easier_than_the_other_side() -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        mat = LpDistance()(emb)
        a, p, _, n = BatchEasyHardMiner("easy", "semihard")(emb, labels)
        assert a.numel() and bool((mat[a, n] > mat[a, p]).all())
        a, p, _, n = BatchEasyHardMiner("semihard", "hard")(emb, labels)
        assert bool((mat[a, p] < mat[a, n]).all())


@pytest.mark.parametrize("pos_strategy,neg_strategy", VALID)
def test_invariants(pos_strategy: str, neg_strategy: str) -> None:
    for seed, with_ref in itertools.product(range(3), [False, True]):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a1, p, a2, n = BatchEasyHardMiner(pos_strategy, neg_strategy)(*args)
        assert all(t.dtype == torch.long for t in (a1, p, a2, n))
        assert bool((labels[a1] == ref_labels[p]).all()) and bool((labels[a2] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a1 != p).all())
        pos, neg = _split((a1, p, a2, n))
        assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
        assert pos == sorted(pos) and neg == sorted(neg)
        if "all" not in (pos_strategy, neg_strategy):
            assert torch.equal(a1, a2) and len(set(a1.tolist())) == a1.numel()


def test_anchors_without_a_positive_or_negative_are_skipped() -> None:
    emb = _batch(0, n=5)[0]
    # anchor 4 is alone in its class; with one class only there are no negatives at all
    a1, _, a2, _ = BatchEasyHardMiner("hard", "hard")(emb, torch.tensor([0, 0, 1, 1, 2]))
    assert a1.tolist() == a2.tolist() == [0, 1, 2, 3]
    out = BatchEasyHardMiner("easy", "semihard")(emb, torch.zeros(5, dtype=torch.long))
    assert all(t.numel() == 0 and t.dtype == torch.long for t in out)


def test_strategies_accept_enum_members_and_expose_pml_constants() -> None:
    miner = BatchEasyHardMiner(MiningStrategy.HARD, BatchEasyHardMiner.EASY)
    assert (miner.pos_strategy, miner.neg_strategy) == ("hard", "easy")
    assert BatchEasyHardMiner.SEMIHARD == "semihard" and BatchEasyHardMiner.ALL == "all"


def test_typos_are_rejected_listing_valid_values() -> None:
    valid = "'hard', 'semihard', 'easy', 'all'"
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"BatchEasyHardMiner: `pos_strategy` must be one of {valid}, got 'semi-hard'. Did you mean 'semihard'"
        ),
    ):
        BatchEasyHardMiner(pos_strategy="semi-hard")
    with pytest.raises(ValueError, match=re.escape(f"`neg_strategy` must be one of {valid}, got 'Hard'.")):
        BatchEasyHardMiner(neg_strategy="Hard")


@pytest.mark.parametrize(
    "pos,neg,expected",
    [
        ("semihard", "semihard", "`neg_strategy` must be 'easy' or 'hard' when `pos_strategy` is 'semihard', "),
        ("semihard", "all", "`neg_strategy` must be 'easy' or 'hard' when `pos_strategy` is 'semihard', got 'all'."),
        ("all", "semihard", "`pos_strategy` must be 'easy' or 'hard' when `neg_strategy` is 'semihard', got 'all'."),
    ],
)
def test_impossible_combinations_are_rejected(pos: str, neg: str, expected: str) -> None:
    with pytest.raises(ValueError, match="BatchEasyHardMiner: " + re.escape(expected)):
        BatchEasyHardMiner(pos, neg)


@pytest.mark.parametrize("bad", [(1.0,), (2.0, 1.0), "ab", (0.0, float("nan")), (0, "1"), 3.0])
def test_invalid_ranges_are_rejected(bad: object) -> None:
    rule = "None or a (low, high) pair of numbers with low <= high"
    with pytest.raises(
        ValueError, match=re.escape(f"BatchEasyHardMiner: `allowed_neg_range` must be {rule}, got {bad!r}.")
    ):
        BatchEasyHardMiner(allowed_neg_range=bad)  # type: ignore[arg-type]


def test_ranges_accept_lists_and_ints() -> None:
    assert BatchEasyHardMiner(allowed_pos_range=[0, 1]).allowed_pos_range == (0.0, 1.0)


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("pos_strategy,neg_strategy", VALID)
@pytest.mark.parametrize("distance", list(DISTANCES))
def test_equal_to_pml(pos_strategy: str, neg_strategy: str, distance: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, _, pml_name = DISTANCES[distance]
    for allowed in (None, RANGES[distance]):
        ours = BatchEasyHardMiner(pos_strategy, neg_strategy, allowed, allowed, distance=factory())
        theirs = pml_miners.BatchEasyHardMiner(
            pos_strategy, neg_strategy, allowed, allowed, distance=getattr(pml_distances, pml_name)()
        )
        for seed in range(3):
            emb, labels = _batch(seed, n=16, classes=4)
            ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
            for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
                for x, y in zip(ours(*args), theirs(*args), strict=True):
                    assert torch.equal(x, y)


@pytest.mark.parametrize("pos_strategy,neg_strategy", [("easy", "semihard"), ("hard", "hard"), ("all", "easy")])
def test_mined_pairs_fed_to_the_triplet_loss_match_pml(pos_strategy: str, neg_strategy: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        mined = BatchEasyHardMiner(pos_strategy, neg_strategy)(emb, labels)
        ours = TripletMarginLoss(margin=1.0)(emb, labels, mined)
        theirs_mined = pml_miners.BatchEasyHardMiner(pos_strategy, neg_strategy)(emb, labels)
        theirs = pml_losses.TripletMarginLoss(margin=1.0)(emb, labels, theirs_mined)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mined_pairs_fed_to_the_contrastive_loss_match_pml() -> None:
    contrastive = pytest.importorskip("dmlkit.losses.contrastive", reason="dmlkit has no ContrastiveLoss")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ours = contrastive.ContrastiveLoss(0.1, 0.9)(emb, labels, BatchEasyHardMiner("hard", "all")(emb, labels))
        theirs_mined = pml_miners.BatchEasyHardMiner("hard", "all")(emb, labels)
        theirs = pml_losses.ContrastiveLoss(0.1, 0.9)(emb, labels, theirs_mined)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
