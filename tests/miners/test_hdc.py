"""HDCMiner against brute-force loops (tests/reference/miners.py), cascades and PML equality."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners import hdc as hdc_module
from dmlkit.miners.hdc import HDCMiner
from dmlkit.miners.pair_margin import PairMarginMiner
from dmlkit.miners.triplet_margin import TripletMarginMiner
from dmlkit.types import Pairs
from tests.reference import miners as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, distance_matrix, to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, str]] = {
    "lp": (LpDistance, LP, "LpDistance"),
    "cosine": (CosineSimilarity, COSINE, "CosineSimilarity"),
}
FRACTIONS = [0.0, 0.1, 0.3, 0.5, 0.77, 1.0]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _split(out: tuple[Tensor, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    a1, p, a2, n = (t.tolist() for t in out)
    return list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))


def _hardest_positives_first(
    expected: tuple[list[tuple[int, int]], list[tuple[int, int]]], mat: list[list[float]], is_similarity: bool
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The oracle's pairs (in candidate order) with the positives re-listed hardest first, ties in order."""
    pos, neg = expected
    sign = 1 if is_similarity else -1  # the hardest positive: least similar, or farthest
    return sorted(pos, key=lambda pair: sign * mat[pair[0]][pair[1]]), neg


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_matches_brute_force_with_a_reference_set(distance: str, fraction: float) -> None:
    factory, spec, _ = DISTANCES[distance]
    miner = HDCMiner(fraction, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        out = miner(emb, labels, ref_emb, ref_labels)
        assert isinstance(out, Pairs)
        mat = distance_matrix(to_lists(emb), to_lists(ref_emb), spec)
        pos, neg = ref.pairs_of(labels.tolist(), ref_labels.tolist())
        expected = ref.hdc(mat, fraction, spec.is_similarity, pos, neg)
        assert _split(out) == _hardest_positives_first(expected, mat, spec.is_similarity)


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_matches_brute_force_within_the_batch(distance: str, fraction: float) -> None:
    # d(i, j) and d(j, i) tie, so the oracle ranks the library's own matrix: only the selection is compared
    factory, spec, _ = DISTANCES[distance]
    miner = HDCMiner(fraction, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed)
        mat = to_lists(miner.distance(emb))
        pos, neg = ref.pairs_of(labels.tolist())
        expected = ref.hdc(mat, fraction, spec.is_similarity, pos, neg)
        assert _split(miner(emb, labels)) == _hardest_positives_first(expected, mat, spec.is_similarity)


@pytest.mark.parametrize("sparse_ratio", [0, 10**9])
def test_listed_and_in_place_selection_agree(monkeypatch: pytest.MonkeyPatch, sparse_ratio: int) -> None:
    for seed in range(3):
        emb, labels = _batch(seed, n=20, classes=4)
        for fraction in (0.1, 0.3, 0.5):
            default = HDCMiner(fraction)(emb, labels)
            monkeypatch.setattr(hdc_module, "_SPARSE_RATIO", sparse_ratio)  # 0: always list, 1e9: never
            forced = HDCMiner(fraction)(emb, labels)
            monkeypatch.undo()
            assert all(torch.equal(x, y) for x, y in zip(default, forced, strict=True))


def test_hand_computed_example() -> None:
    emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    lp = LpDistance(normalize_embeddings=False)
    # positives: (0,1) (1,0) at 1, (2,3) (3,2) at .5; negatives: 2, 2, 2.5, 2.5, 3, 3, 3.5, 3.5
    out = _split(HDCMiner(0.5, distance=lp)(emb, labels))
    assert out == ([(0, 1), (1, 0)], [(1, 2), (1, 3), (2, 1), (3, 1)])
    # ceil(0.25 * 4) = 1 positive; the first of the tied hardest pairs wins; ceil(0.25 * 8) = 2 negatives
    assert _split(HDCMiner(0.25, distance=lp)(emb, labels)) == ([(0, 1)], [(1, 2), (2, 1)])


def test_fraction_is_taken_as_written() -> None:
    emb, _ = _batch(0, n=10)
    labels = torch.arange(5).repeat(2)  # 10 positive pairs
    a1, _, _, _ = HDCMiner(0.3)(emb, labels)
    assert a1.numel() == 3  # 0.3 * 10 is 3.0000000000000004 in binary; the ceiling of the intended 3 is 3


def test_zero_and_one() -> None:
    emb, labels = _batch(1)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in HDCMiner(0)(emb, labels))
    everything = ref.pairs_of(labels.tolist())
    mat = to_lists(LpDistance()(emb))
    assert _split(HDCMiner(1)(emb, labels)) == _hardest_positives_first(everything, mat, False)


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a1, p, a2, n = HDCMiner(0.4)(*args)
        assert all(t.dtype == torch.long for t in (a1, p, a2, n)) and a1.numel() and a2.numel()
        assert bool((labels[a1] == ref_labels[p]).all()) and bool((labels[a2] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a1 != p).all())
        pos, neg = _split((a1, p, a2, n))
        assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
        mat = LpDistance()(emb, ref_emb)
        assert neg == sorted(neg) and bool((mat[a1, p][1:] <= mat[a1, p][:-1]).all())  # farthest positive first
        all_pos, all_neg = ref.pairs_of(labels.tolist(), ref_labels.tolist() if with_ref else None)
        # every kept positive is at least as far as every dropped one, negatives the other way round
        dropped_pos = torch.tensor([mat[i, j] for i, j in set(all_pos) - set(pos)], dtype=torch.float64)
        dropped_neg = torch.tensor([mat[i, j] for i, j in set(all_neg) - set(neg)], dtype=torch.float64)
        assert mat[a1, p].min() >= dropped_pos.max() and mat[a2, n].max() <= dropped_neg.min()


def test_cascade_with_external_indices() -> None:
    emb, labels = _batch(2, n=16, classes=4)
    first = TripletMarginMiner(margin=0.5)(emb, labels)
    miner = HDCMiner(0.5)
    assert not miner.was_set_externally
    miner.set_idx_externally(first, labels)
    assert miner.was_set_externally
    out = miner(emb, labels)
    pos = list(zip(first.anchors.tolist(), first.positives.tolist(), strict=True))
    neg = list(zip(first.anchors.tolist(), first.negatives.tolist(), strict=True))
    mat = to_lists(miner.distance(emb))
    expected = _hardest_positives_first(ref.hdc(mat, 0.5, False, pos, neg), mat, False)
    assert _split(out) == expected
    # the external pairs stay the candidates for every call until reset_idx
    assert _split(miner(emb, labels)) == expected
    miner.reset_idx()
    assert not miner.was_set_externally
    assert _split(miner(emb, labels)) == _split(HDCMiner(0.5)(emb, labels))
    miner.set_idx_externally(None, labels)
    assert _split(miner(emb, labels)) == _split(HDCMiner(0.5)(emb, labels))


def test_external_indices_out_of_range_are_rejected() -> None:
    miner = HDCMiner()
    miner.set_idx_externally((torch.tensor([0]), torch.tensor([15]), torch.tensor([2])), torch.zeros(20).long())
    with pytest.raises(
        ValueError,
        match=re.escape("HDCMiner: `indices_tuple[1]` must be indices in [0, 12), got 'values from 15 to 15'."),
    ):
        miner(*_batch(0))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_fraction_out_of_range_is_rejected(bad: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"HDCMiner: `filter_percentage` must be a number >= 0 and <= 1, got {bad}.")
    ):
        HDCMiner(filter_percentage=bad)


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_equal_to_pml(distance: str, fraction: float) -> None:
    """Same pairs as PML, the positives in PML's hardest-first order; the negatives in candidate order.

    Within the batch d(i, j) and d(j, i) tie, and which of two tied pairs at the cut PML's ``topk`` keeps
    is unspecified; there the kept values are compared.
    """
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, _, pml_name = DISTANCES[distance]
    ours = HDCMiner(fraction, distance=factory())
    theirs = pml_miners.HDCMiner(fraction, distance=getattr(pml_distances, pml_name)())
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        mine, other = ours(emb, labels, ref_emb, ref_labels), theirs(emb, labels, ref_emb, ref_labels)
        assert tuple(sorted(x) for x in _split(mine)) == tuple(sorted(x) for x in _split(other))
        if fraction > 0:  # no ties against a separate reference set: the very same order
            assert torch.equal(mine[0], other[0]) and torch.equal(mine[1], other[1])
        mine, other = ours(emb, labels), theirs(emb, labels)
        mat = ours.distance(emb)
        for i in (0, 2):
            assert torch.equal(mat[mine[i], mine[i + 1]].sort().values, mat[other[i], other[i + 1]].sort().values)


def test_external_indices_equal_to_pml() -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=12, classes=4)
        args = (emb, labels, ref_emb, ref_labels)
        first = PairMarginMiner(0.5, 1.2)(*args)
        ours, theirs = HDCMiner(0.5), pml_miners.HDCMiner(0.5)
        ours.set_idx_externally(first, labels)
        theirs.set_idx_externally(first, labels)
        mine, other = ours(*args), theirs(*args)
        assert mine[0].numel() == math.ceil(first[0].numel() / 2)
        assert tuple(sorted(x) for x in _split(mine)) == tuple(sorted(x) for x in _split(other))
        # PML overwrites its candidates with each call's output, so a second call filters again; ours does not
        assert theirs(*args)[0].numel() < ours(*args)[0].numel() == mine[0].numel()


def test_mined_pairs_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        args = (emb, labels, ref_emb, ref_labels)
        ours = TripletMarginLoss(margin=0.3)(emb, labels, HDCMiner(0.5)(*args), ref_emb, ref_labels)
        theirs = pml_losses.TripletMarginLoss(margin=0.3)(
            emb, labels, pml_miners.HDCMiner(0.5)(*args), ref_emb, ref_labels
        )
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mined_pairs_fed_to_the_contrastive_loss_match_pml() -> None:
    contrastive = pytest.importorskip("dmlkit.losses.contrastive", reason="dmlkit has no ContrastiveLoss")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ours = contrastive.ContrastiveLoss(0.1, 0.9)(emb, labels, HDCMiner(0.5)(emb, labels))
        theirs = pml_losses.ContrastiveLoss(0.1, 0.9)(emb, labels, pml_miners.HDCMiner(0.5)(emb, labels))
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("transposed", [False, True])
def test_smallest_keeps_the_earliest_of_the_ties_at_the_cut(transposed: bool) -> None:
    # values on a coarse grid: many ties at every cut; the oracle is a stable sort of the row-major values
    g = torch.Generator().manual_seed(0)
    key = torch.randint(0, 5, (9, 7), generator=g).float()
    key = key.t().contiguous().t() if transposed else key  # the same values in a column-major layout
    flat = key.reshape(-1).tolist()
    for k in range(0, key.numel() + 1):
        chosen = sorted(range(len(flat)), key=lambda i: (flat[i], i))[:k]
        expected = [i in set(chosen) for i in range(len(flat))]
        assert hdc_module.smallest(key, k).reshape(-1).tolist() == expected, k
