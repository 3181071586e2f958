"""UniformHistogramMiner: bins against a brute-force oracle, uniform draws within bins (chi-square), PML."""

from __future__ import annotations

import collections
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners import uniform_histogram as histogram_module
from dmlkit.miners.uniform_histogram import UniformHistogramMiner
from dmlkit.types import Pairs
from tests.reference import miners as ref
from tests.reference.triplet import to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], str]] = {
    "lp": (LpDistance, "LpDistance"),
    "cosine": (CosineSimilarity, "CosineSimilarity"),
}


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bins(mat: list[list[float]], pairs: list[tuple[int, int]], num_bins: int) -> dict[tuple[int, int], int | None]:
    """The oracle's bin of every candidate pair, with edges at ``min + i (max - min) / num_bins``."""
    values = [mat[i][j] for i, j in pairs]
    low, high = min(values), max(values)
    edges = [low + (high - low) * i / num_bins for i in range(num_bins)] + [high]
    return dict(zip(pairs, ref.histogram_bins(values, edges), strict=True))


def _histogram(out: tuple[Tensor, Tensor], bins: dict[tuple[int, int], int | None]) -> collections.Counter:
    return collections.Counter(bins[pair] for pair in zip(out[0].tolist(), out[1].tolist(), strict=True))


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("num_bins", [1, 5, 20])
@pytest.mark.parametrize("with_ref", [False, True])
def test_every_filled_bin_gets_its_draws(distance: str, num_bins: int, with_ref: bool) -> None:
    factory, _ = DISTANCES[distance]
    miner = UniformHistogramMiner(num_bins, 3, 4, generator=_gen(0), distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed, n=14)
        ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
        out = miner(emb, labels, ref_emb, ref_labels) if with_ref else miner(emb, labels)
        assert isinstance(out, Pairs)
        mat = to_lists(miner.distance(emb, ref_emb))
        positives, negatives = ref.pairs_of(labels.tolist(), ref_labels.tolist() if with_ref else None)
        for pairs, drawn, per_bin in ((positives, out[:2], 3), (negatives, out[2:], 4)):
            bins = _bins(mat, pairs, num_bins)
            assert all(pair in bins for pair in zip(drawn[0].tolist(), drawn[1].tolist(), strict=True))
            filled = {b for b in bins.values() if b is not None}
            assert _histogram(drawn, bins) == {b: per_bin for b in filled}
            order = [bins[pair] for pair in zip(drawn[0].tolist(), drawn[1].tolist(), strict=True)]
            assert order == sorted(order)  # type: ignore[type-var]


def test_values_on_bin_edges() -> None:
    # 1-D points 0..11 with raw distances: every pair value is an integer, and so is every edge
    emb = torch.arange(12, dtype=torch.float64).unsqueeze(1)
    labels = torch.tensor([0, 1] * 6)
    lp = LpDistance(normalize_embeddings=False)
    for num_bins in (1, 2, 5, 10, 11):
        miner = UniformHistogramMiner(num_bins, 2, 3, generator=_gen(num_bins), distance=lp)
        out = miner(emb, labels)
        mat = to_lists(lp(emb))
        for pairs, i, per_bin in zip(ref.pairs_of(labels.tolist()), (0, 2), (2, 3), strict=True):
            bins = _bins(mat, pairs, num_bins)
            filled = {b for b in bins.values() if b is not None}
            assert _histogram(out[i : i + 2], bins) == {b: per_bin for b in filled}


def test_draws_are_uniform_within_each_bin() -> None:
    stats = pytest.importorskip("scipy.stats")
    emb, labels = _batch(7, n=16, classes=3)
    draws = 1600  # draws within a bin are independent, so one call with many draws per bin suffices
    miner = UniformHistogramMiner(6, 1, draws, generator=_gen(1))
    mat = to_lists(miner.distance(emb))
    _, negatives = ref.pairs_of(labels.tolist())
    bins = _bins(mat, negatives, 6)
    _, _, a2, n = miner(emb, labels)
    counts = collections.Counter(zip(a2.tolist(), n.tolist(), strict=True))

    def p_value(weight: Callable[[int], float]) -> float:
        statistic, dof = 0.0, 0
        for b in set(bins.values()):
            members = sorted(pair for pair, x in bins.items() if x == b)
            total = sum(counts[pair] for pair in members)
            assert total == draws
            weights = [weight(rank) for rank in range(len(members))]
            for pair, w in zip(members, weights, strict=True):
                predicted = total * w / sum(weights)
                statistic += (counts[pair] - predicted) ** 2 / predicted
            dof += len(members) - 1
        return float(stats.chi2.sf(statistic, dof))

    assert sum(size - 1 for size in collections.Counter(bins.values()).values()) > 50  # enough to test
    assert p_value(lambda rank: 1.0) > 1e-3
    assert p_value(lambda rank: 1.0 + rank) < 1e-6  # the statistic can tell a skewed draw


def test_generator_makes_draws_reproducible() -> None:
    emb, labels = _batch(3, n=20, classes=4)
    first = UniformHistogramMiner(10, 5, 5, generator=_gen(5))(emb, labels)
    again = UniformHistogramMiner(10, 5, 5, generator=_gen(5))(emb, labels)
    other = UniformHistogramMiner(10, 5, 5, generator=_gen(6))(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(first.negatives, other.negatives)


@pytest.mark.parametrize("sparse_ratio", [0, 10**9])
@pytest.mark.parametrize("block_cells", [1, 1 << 22])
def test_listed_and_counted_candidates_give_the_same_draws(
    monkeypatch: pytest.MonkeyPatch, sparse_ratio: int, block_cells: int
) -> None:
    # a draw of rank r in a bin is that bin's r-th candidate in row-major order, however it is found
    for seed in range(3):
        emb, labels = _batch(seed, n=20, classes=4)
        default = UniformHistogramMiner(10, 5, 5, generator=_gen(seed))(emb, labels)
        monkeypatch.setattr(histogram_module, "_SPARSE_RATIO", sparse_ratio)  # 0: always list, 1e9: never
        monkeypatch.setattr(histogram_module, "_BLOCK_CELLS", block_cells)
        forced = UniformHistogramMiner(10, 5, 5, generator=_gen(seed))(emb, labels)
        monkeypatch.undo()
        assert all(torch.equal(x, y) for x, y in zip(default, forced, strict=True))


def test_identical_values_fall_in_the_last_bin() -> None:
    emb = torch.ones(6, 3)
    a1, p, a2, n = UniformHistogramMiner(4, 5, 7)(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert a1.numel() == 5 and a2.numel() == 7
    assert bool((a1 != p).all())


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a1, p, a2, n = UniformHistogramMiner(8, 4, 4, generator=_gen(seed))(*args)
        assert all(t.dtype == torch.long for t in (a1, p, a2, n)) and a1.numel() and a2.numel()
        assert bool((labels[a1] == ref_labels[p]).all()) and bool((labels[a2] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a1 != p).all())


def test_single_class_and_singletons() -> None:
    emb = _batch(0)[0]
    a1, _, a2, _ = UniformHistogramMiner(5, 2, 2)(emb, torch.zeros(12, dtype=torch.long))
    assert a1.numel() > 0 and a2.numel() == 0 and a2.dtype == torch.long
    a1, _, a2, _ = UniformHistogramMiner(5, 2, 2)(emb, torch.arange(12))
    assert a1.numel() == 0 and a2.numel() > 0


@pytest.mark.parametrize("arg", ["num_bins", "pos_per_bin", "neg_per_bin"])
def test_invalid_counts_are_rejected(arg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"UniformHistogramMiner: `{arg}` must be an integer >= 1, got 0.")):
        UniformHistogramMiner(**{arg: 0})
    with pytest.raises(TypeError, match=re.escape(f"UniformHistogramMiner: `{arg}` must be an integer, got 2.5.")):
        UniformHistogramMiner(**{arg: 2.5})  # type: ignore[arg-type]


def test_invalid_generator_is_rejected() -> None:
    with pytest.raises(
        TypeError, match=re.escape("UniformHistogramMiner: `generator` must be a torch.Generator or None, got int.")
    ):
        UniformHistogramMiner(generator=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("with_ref", [False, True])
def test_same_histogram_of_draws_as_pml(distance: str, with_ref: bool) -> None:
    """The draws are random in both, but which bins get how many draws is not."""
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, pml_name = DISTANCES[distance]
    for num_bins in (3, 10, 50):
        ours = UniformHistogramMiner(num_bins, 3, 5, generator=_gen(num_bins), distance=factory())
        theirs = pml_miners.UniformHistogramMiner(num_bins, 3, 5, distance=getattr(pml_distances, pml_name)())
        for seed in range(2):
            emb, labels = _batch(seed, n=16, classes=4)
            ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4) if with_ref else (emb, labels)
            args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
            mine, other = ours(*args), theirs(*args)
            mat = to_lists(ours.distance(emb, ref_emb))
            positives, negatives = ref.pairs_of(labels.tolist(), ref_labels.tolist() if with_ref else None)
            for pairs, i in ((positives, 0), (negatives, 2)):
                bins = _bins(mat, pairs, num_bins)
                assert _histogram(mine[i : i + 2], bins) == _histogram(other[i : i + 2], bins)


def test_mined_pairs_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        mined = UniformHistogramMiner(10, 4, 4, generator=_gen(seed))(emb, labels)
        ours = TripletMarginLoss(margin=0.5)(emb, labels, mined)
        theirs = pml_losses.TripletMarginLoss(margin=0.5)(emb, labels, tuple(mined))
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mined_pairs_fed_to_the_contrastive_loss_match_pml() -> None:
    contrastive = pytest.importorskip("dmlkit.losses.contrastive", reason="dmlkit has no ContrastiveLoss")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        mined = UniformHistogramMiner(10, 4, 4, generator=_gen(seed))(emb, labels)
        ours = contrastive.ContrastiveLoss(0.1, 0.9)(emb, labels, mined)
        theirs = pml_losses.ContrastiveLoss(0.1, 0.9)(emb, labels, tuple(mined))
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
