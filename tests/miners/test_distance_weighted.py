"""DistanceWeightedMiner: weights against a float64 oracle and PML, draws against the weights (chi-square)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.distance_weighted import DistanceWeightedMiner
from dmlkit.types import Triplets
from tests.reference import miners as ref
from tests.reference.triplet import to_lists


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _as_list(t: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dim", [3, 5, 16, 64])
@pytest.mark.parametrize("cutoffs", [(0.5, 1.4), (0.0, 1.4), (0.8, 1.2), (0.5, 2.5)])
@pytest.mark.parametrize("with_ref", [False, True])
def test_weights_match_the_oracle(dim: int, cutoffs: tuple[float, float], with_ref: bool) -> None:
    miner = DistanceWeightedMiner(*cutoffs)
    for seed in range(2):
        emb, labels = _batch(seed, n=10, d=dim)
        ref_emb, ref_labels = _batch(seed + 30, n=7, d=dim) if with_ref else (None, None)
        weights = miner.sampling_weights(emb, labels, ref_emb, ref_labels)
        expected = ref.distance_weighted_probabilities(
            to_lists(emb),
            labels.tolist(),
            *cutoffs,
            to_lists(ref_emb) if with_ref else None,
            ref_labels.tolist() if ref_labels is not None else None,
        )
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        if dim <= 16:  # in higher dimensions every distance is near sqrt(2), beyond some cutoffs
            assert bool((weights.sum(1) > 0).any())


@pytest.fixture(params=["one block", "blocks of 2 rows"])
def row_blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights are built and drawn from in row blocks: one, or many."""
    if request.param != "one block":
        monkeypatch.setattr("dmlkit.miners.distance_weighted.BLOCK_CELLS", 2 * 16)


@pytest.mark.usefixtures("row_blocks")
def test_output_is_every_positive_pair_with_a_drawn_negative() -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=16, d=5, classes=4)
        miner = DistanceWeightedMiner(0.3, 0.8, generator=_gen(seed))
        weights = miner.sampling_weights(emb, labels)
        out = miner(emb, labels)
        assert isinstance(out, Triplets)
        usable = set(torch.nonzero(weights.sum(1) > 0).flatten().tolist())
        assert 0 < len(usable) < 16  # the cutoff of 0.8 leaves some anchors without a negative
        pos, _ = ref.pairs_of(labels.tolist())
        assert [(a, p) for a, p, _ in _as_list(out)] == [(a, p) for a, p in pos if a in usable]
        assert bool((weights[out.anchors, out.negatives] > 0).all())


@pytest.mark.usefixtures("row_blocks")
@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, d=6, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, d=6, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a, p, n = DistanceWeightedMiner(generator=_gen(seed))(*args)
        assert a.dtype == p.dtype == n.dtype == torch.long and a.numel()
        assert bool((labels[a] == ref_labels[p]).all()) and bool((labels[a] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a != p).all())
        ap = list(zip(a.tolist(), p.tolist(), strict=True))
        assert len(set(ap)) == len(ap) and ap == sorted(ap)


@pytest.mark.usefixtures("row_blocks")
def test_draws_follow_the_weights() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = _gen(11)
    # 5 anchors of class 0; the reference set has 400 positives, so each call draws 400 negatives per anchor
    emb = torch.randn(5, 5, generator=g, dtype=torch.float64)
    labels = torch.zeros(5, dtype=torch.long)
    ref_emb = torch.cat([torch.randn(400, 5, generator=g, dtype=torch.float64), torch.randn(12, 5, generator=g)])
    ref_labels = torch.cat([torch.zeros(400, dtype=torch.long), torch.arange(12) % 3 + 1])
    miner = DistanceWeightedMiner(0.5, 1.6, generator=_gen(12))
    expected = torch.tensor(
        ref.distance_weighted_probabilities(
            to_lists(emb), labels.tolist(), 0.5, 1.6, to_lists(ref_emb), ref_labels.tolist()
        )
    )
    counts = torch.zeros(5, 412, dtype=torch.float64)
    for _ in range(4):
        a, _, n = miner(emb, labels, ref_emb, ref_labels)
        counts.index_put_((a, n), torch.ones(a.numel(), dtype=torch.float64), accumulate=True)

    def p_value(probabilities: Tensor) -> float:
        statistic, dof = 0.0, 0
        for row in range(5):
            support = probabilities[row] > 0
            assert counts[row][~support].sum() == 0 and int(support.sum()) >= 4
            predicted = probabilities[row][support] * counts[row].sum()
            statistic += float(((counts[row][support] - predicted) ** 2 / predicted).sum())
            dof += int(support.sum()) - 1
        return float(stats.chi2.sf(statistic, dof))

    assert counts.sum() == 4 * 5 * 400
    assert p_value(expected) > 1e-3
    # the same statistic rejects uniform sampling among the allowed negatives
    uniform = (expected > 0).double()
    assert p_value(uniform / uniform.sum(1, keepdim=True)) < 1e-6


def test_generator_makes_draws_reproducible() -> None:
    emb, labels = _batch(3, n=20, d=6, classes=4)
    first = DistanceWeightedMiner(generator=_gen(5))(emb, labels)
    again = DistanceWeightedMiner(generator=_gen(5))(emb, labels)
    other = DistanceWeightedMiner(generator=_gen(6))(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(first.negatives, other.negatives)


def test_anchors_without_allowed_negatives_or_positives_are_skipped() -> None:
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]]))
    labels = torch.tensor([0, 0, 1, 1])
    # every negative is at distance ~2 >= nonzero_loss_cutoff: nothing can be drawn
    assert all(t.numel() == 0 for t in DistanceWeightedMiner()(emb, labels))
    assert bool((DistanceWeightedMiner().sampling_weights(emb, labels) == 0).all())
    assert all(t.numel() == 0 for t in DistanceWeightedMiner(nonzero_loss_cutoff=2.5)(emb, torch.arange(4)))
    assert all(t.numel() == 0 for t in DistanceWeightedMiner()(emb, torch.zeros(4, dtype=torch.long)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    emb, labels = _batch(2, n=16, d=64, classes=4)
    weights = DistanceWeightedMiner().sampling_weights(emb.to(dtype), labels)
    assert weights.dtype == torch.float32
    exact = DistanceWeightedMiner().sampling_weights(emb, labels)
    # bfloat16 distances carry about 3 significant digits, and the weights grow like d^(2 - dim)
    tolerance = {torch.float16: 0.02, torch.bfloat16: 0.1, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(weights.double(), exact, atol=tolerance, rtol=0)
    a, p, n = DistanceWeightedMiner(generator=_gen(0))(emb.to(dtype), labels)
    assert a.numel() and bool((labels[a] != labels[n]).all())


def test_no_gradient_flows_through_mining() -> None:
    emb, labels = _batch(1, d=5)
    emb.requires_grad_()
    assert not any(t.requires_grad for t in DistanceWeightedMiner()(emb, labels))
    assert not DistanceWeightedMiner().sampling_weights(emb, labels).requires_grad


@pytest.mark.parametrize("distance", [CosineSimilarity(), LpDistance(power=2), LpDistance(normalize_embeddings=False)])
def test_other_distances_are_rejected(distance: object) -> None:
    rule = "LpDistance(p=2, power=1, normalize_embeddings=True)"
    with pytest.raises(
        ValueError, match=re.escape(f"DistanceWeightedMiner: `distance` must be {rule}, got {distance!r}.")
    ):
        DistanceWeightedMiner(distance=distance)  # type: ignore[arg-type]


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("DistanceWeightedMiner: `cutoff` must be a number >= 0, got -0.1.")):
        DistanceWeightedMiner(cutoff=-0.1)
    with pytest.raises(
        ValueError, match=re.escape("DistanceWeightedMiner: `nonzero_loss_cutoff` must be > `cutoff` (0.5), got 0.5.")
    ):
        DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.5)
    with pytest.raises(
        TypeError, match=re.escape("DistanceWeightedMiner: `generator` must be a torch.Generator or None, got int.")
    ):
        DistanceWeightedMiner(generator=0)  # type: ignore[arg-type]


def test_sampling_weights_validates_its_inputs() -> None:
    emb, labels = _batch(0)
    with pytest.raises(ValueError, match=re.escape("DistanceWeightedMiner: `ref_labels` must be given when")):
        DistanceWeightedMiner().sampling_weights(emb, labels, emb)


# --------------------------------------------------------------------------------------------- PML


def _pml_weights(monkeypatch: pytest.MonkeyPatch, emb: Tensor, labels: Tensor, *extra: Tensor) -> tuple[Tensor, ...]:
    """PML's sampling weights (captured on their way to its sampler) and its mined triplets."""
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")
    captured: dict[str, Tensor] = {}
    sampler = lmu.get_random_triplet_indices

    def spy(*args: object, **kwargs: object) -> object:
        captured["weights"] = kwargs["weights"]  # type: ignore[assignment]
        return sampler(*args, **kwargs)

    monkeypatch.setattr(lmu, "get_random_triplet_indices", spy)
    mined = pml_miners.DistanceWeightedMiner()(emb, labels, *extra)
    return captured["weights"], *mined


@pytest.mark.parametrize("dim", [4, 16, 128])
@pytest.mark.parametrize("with_ref", [False, True])
def test_weights_equal_pml_in_float64(monkeypatch: pytest.MonkeyPatch, dim: int, with_ref: bool) -> None:
    for seed in range(3):
        emb, labels = _batch(seed, n=20, d=dim, classes=4)
        extra = _batch(seed + 40, n=13, d=dim, classes=4) if with_ref else ()
        theirs, a, _, _ = _pml_weights(monkeypatch, emb, labels, *extra)
        ours = DistanceWeightedMiner().sampling_weights(emb, labels, *extra)
        # PML leaves NaN in rows without an allowed negative; ours are zeros there
        torch.testing.assert_close(ours, theirs.nan_to_num(0.0), rtol=1e-10, atol=1e-12)
        # the same anchors get triplets; PML draws one more positive than there are (class size, with
        # replacement) per anchor, ours pair every positive once
        mine = DistanceWeightedMiner(generator=_gen(seed))(emb, labels, *extra)
        assert torch.equal(torch.unique(a), torch.unique(mine.anchors))
        if not with_ref:
            their_counts = torch.bincount(a, minlength=20)
            our_counts = torch.bincount(mine.anchors, minlength=20)
            assert torch.equal(their_counts[their_counts > 0], our_counts[our_counts > 0] + 1)


def test_pml_loses_anchors_to_underflow_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """PML subtracts one maximum for the whole matrix, so in float32 the rows of anchors whose negatives are
    all moderately far underflow to zero and those anchors get no triplet; per-row normalisation keeps them."""
    dim = 512
    g = _gen(0)
    shared = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    far = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=1) + 0.43 * shared
    close = torch.nn.functional.normalize(torch.randn(1, dim, generator=g), dim=1)
    close = torch.cat([close, close + 0.01 * torch.randn(3, dim, generator=g)])
    emb = torch.cat([far, close])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mat = LpDistance()(emb)
    assert float(mat[0, 2]) == pytest.approx(1.3, abs=0.05) and float(mat[4, 6]) < 0.5
    theirs, a, _, _ = _pml_weights(monkeypatch, emb, labels)
    ours = DistanceWeightedMiner().sampling_weights(emb, labels)
    assert not bool((theirs[:4].nan_to_num(0.0) > 0).any()) and 0 not in a.tolist()
    expected = ref.distance_weighted_probabilities(to_lists(emb), labels.tolist(), 0.5, 1.4)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-6)
    assert bool((ours[:4].sum(1) > 0.99).all())
    assert 0 in DistanceWeightedMiner()(emb, labels).anchors.tolist()


def test_mined_triplets_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, d=6, classes=4)
        mined = DistanceWeightedMiner(generator=_gen(seed))(emb, labels)
        ours = TripletMarginLoss(margin=0.2)(emb, labels, mined)
        theirs = pml_losses.TripletMarginLoss(margin=0.2)(emb, labels, tuple(mined))
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
