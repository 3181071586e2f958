"""DynamicSoftMarginLoss against the float64 oracle in tests/reference/dynamic_soft_margin.py (state included),
autograd, edge cases and PML."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.indices import all_triplets
from dmlkit.losses.dynamic_soft_margin import DynamicSoftMarginLoss
from dmlkit.miners import TripletMarginMiner
from tests.reference import dynamic_soft_margin as ref

OPTIONS = [{}, {"min_val": -3.0, "num_bins": 7, "momentum": 0.3}, {"min_val": -0.5, "num_bins": 4, "momentum": 0.5}]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _triplet_list(triplets: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(t.tolist() for t in triplets), strict=True))


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle_over_successive_calls(options: dict) -> None:
    # min_val=-0.5 puts many differences outside [-0.5, 0.5]: they are clamped to the end nodes
    loss_fn, oracle = DynamicSoftMarginLoss(**options), ref.RunningCDF(**options)
    for step in range(4):
        emb, labels = _batch(step)
        expected = oracle.loss(ref.triplet_differences(emb, labels))
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-14)
        assert loss_fn.hist_.tolist() == pytest.approx(oracle.hist, rel=1e-10, abs=1e-14)


def test_hand_computed_first_call() -> None:
    # one triplet with x = d(a, p) - d(a, n) in (1, 2); num_bins=4 puts nodes at -2, -1, 0, 1, 2. The first
    # histogram is the triplet's: mass 2 - x at node 1 and x - 1 at node 2, so F(x) = CDF(node 1) = 2 - x.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]], dtype=torch.float64)
    triplet = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    (x,) = ref.triplet_differences(emb, None, triplets=[(0, 1, 2)])
    assert 1 < x < 2
    loss_fn = DynamicSoftMarginLoss(num_bins=4)
    assert loss_fn(emb, indices_tuple=triplet).item() == pytest.approx((2 - x) * x, rel=1e-12)
    assert loss_fn.hist_.tolist() == pytest.approx([0, 0, 0, 2 - x, x - 1], abs=1e-15)


def test_mined_triplets_and_pairs() -> None:
    emb, labels = _batch(4, n=14)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    assert triplets[0].numel() > 0
    expected = ref.RunningCDF().loss(ref.triplet_differences(emb, labels, triplets=_triplet_list(triplets)))
    assert DynamicSoftMarginLoss()(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    # mined pairs become the triplets of pairs that share an anchor
    pairs = (triplets[0][::2], triplets[1][::2], triplets[0][1::2], triplets[2][1::2])
    a1, p, a2, n = (t.tolist() for t in pairs)
    from_pairs = [(a, q, m) for a, q in zip(a1, p, strict=True) for b, m in zip(a2, n, strict=True) if a == b]
    assert from_pairs
    expected = ref.RunningCDF().loss(ref.triplet_differences(emb, labels, triplets=from_pairs))
    assert DynamicSoftMarginLoss()(emb, labels, pairs).item() == pytest.approx(expected, rel=1e-10)


def test_reference_set() -> None:
    emb, labels = _batch(5, n=5)
    ref_emb, ref_labels = _batch(6, n=11)
    expected = ref.RunningCDF().loss(ref.triplet_differences(emb, labels, ref_emb, ref_labels))
    got = DynamicSoftMarginLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_descriptor_pairs_without_labels() -> None:
    # embeddings[i] and ref_emb[i] match; the hardest non-matching distance in row or column i is the negative
    emb, _ = _batch(7, n=10)
    ref_emb = emb + 0.3 * _batch(8, n=10)[0]
    loss_fn, oracle = DynamicSoftMarginLoss(momentum=0.2), ref.RunningCDF(momentum=0.2)
    for _ in range(2):
        expected = oracle.loss(ref.matching_pair_differences(emb, ref_emb))
        assert loss_fn(emb, ref_emb=ref_emb).item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- all triplets


@pytest.mark.parametrize("options", OPTIONS + [{"num_bins": 1}])
def test_all_triplets_equal_the_explicit_triplet_list(options: dict) -> None:
    # the exact sort-free evaluation of every triplet vs the same triplets listed one by one: value, gradient, state
    fast, listed = DynamicSoftMarginLoss(**options), DynamicSoftMarginLoss(**options)
    for step in range(3):
        emb, labels = _batch(step + 10, n=14)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a = fast(x1, labels)
        b = listed(x2, labels, tuple(all_triplets(labels)))
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), rel=1e-10, abs=1e-14)
        assert torch.allclose(x1.grad, x2.grad, rtol=1e-9, atol=1e-13)
        assert torch.allclose(fast.hist_, listed.hist_, rtol=1e-10, atol=1e-14)


def test_ties_between_thresholds_and_distances() -> None:
    # duplicated embeddings give equal distances, so equal thresholds and distances exactly on them
    emb, labels = _batch(13, n=6)
    emb = torch.cat([emb, emb])
    labels = torch.cat([labels, labels])
    fast, listed = DynamicSoftMarginLoss(num_bins=4), DynamicSoftMarginLoss(num_bins=4)
    assert fast(emb, labels).item() == pytest.approx(
        listed(emb, labels, tuple(all_triplets(labels))).item(), rel=1e-10, abs=1e-14
    )


# --------------------------------------------------------------------------------------------- gradients


def test_gradient_is_the_cdf_weight() -> None:
    # with the histogram frozen (momentum 0 after the first call), d loss / d x_t = F(x_t) / T exactly
    emb, labels = _batch(14, n=7, d=3)
    loss_fn = DynamicSoftMarginLoss(momentum=0.0)
    loss_fn(emb, labels)
    frozen = loss_fn.hist_.clone()
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.clone().requires_grad_(),))
    assert torch.equal(loss_fn.hist_, frozen)


def test_histogram_is_never_in_the_graph_and_training_loops_work() -> None:
    # pytorch-metric-learning keeps its histogram in the graph: the second backward() raises
    emb, labels = _batch(15)
    loss_fn = DynamicSoftMarginLoss()
    for _ in range(3):
        x = emb.clone().requires_grad_()
        loss_fn(x, labels).backward()
        assert not loss_fn.hist_.requires_grad and loss_fn.hist_.grad_fn is None
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    theirs = pml_losses.DynamicSoftMarginLoss()
    theirs(emb.clone().requires_grad_(), labels).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        theirs(emb.clone().requires_grad_(), labels).backward()


# --------------------------------------------------------------------------------------------- state


def test_statistics_are_per_instance_buffers() -> None:
    emb, labels = _batch(16)
    first, second = DynamicSoftMarginLoss(), DynamicSoftMarginLoss()
    first(emb, labels)
    assert float(first.hist_.sum()) == pytest.approx(1.0) and float(second.hist_.sum()) == 0.0
    state = first.state_dict()
    assert set(state) == {"hist_"} and state["hist_"].shape == (11,)
    restored = DynamicSoftMarginLoss().double()  # load_state_dict copies into the buffer's dtype
    restored.load_state_dict(state)
    other, _ = _batch(17)
    assert restored(other, labels).item() == pytest.approx(first(other, labels).item(), rel=1e-12)
    assert torch.equal(restored.hist_, first.hist_)


def test_buffer_follows_dtype_and_to() -> None:
    loss_fn = DynamicSoftMarginLoss()
    assert loss_fn.hist_.dtype == torch.float32
    loss_fn(*_batch(18))
    assert loss_fn.hist_.dtype == torch.float64
    assert loss_fn.float().hist_.dtype == torch.float32


def test_no_triplet_leaves_the_statistics_alone() -> None:
    emb = _batch(19)[0].requires_grad_()
    loss_fn = DynamicSoftMarginLoss()
    loss = loss_fn(emb, torch.arange(12))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())
    assert float(loss_fn.hist_.abs().sum()) == 0.0


# --------------------------------------------------------------------------------------------- edge cases


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = DynamicSoftMarginLoss()(emb, labels)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(20, scale=scale)
    emb = emb.float().requires_grad_()
    loss = DynamicSoftMarginLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,error,text",
    [
        ({"min_val": 0.0}, ValueError, "DynamicSoftMarginLoss: `min_val` must be a number < 0, got 0.0."),
        ({"num_bins": 0}, ValueError, "DynamicSoftMarginLoss: `num_bins` must be an integer >= 1, got 0."),
        ({"momentum": 1.5}, ValueError, "DynamicSoftMarginLoss: `momentum` must be a number >= 0 and <= 1, got 1.5."),
    ],
)
def test_error_parameters(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        DynamicSoftMarginLoss(**kwargs)


def test_error_distance() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "DynamicSoftMarginLoss: `distance` must be an LpDistance (Euclidean on unit vectors), "
            "got 'CosineSimilarity'."
        ),
    ):
        DynamicSoftMarginLoss(distance=CosineSimilarity())
    with pytest.raises(ValueError, match=re.escape("got 'p=1, normalize_embeddings=True'.")):
        DynamicSoftMarginLoss(distance=LpDistance(p=1))


def test_error_unmatched_reference_without_labels() -> None:
    emb, _ = _batch(21, n=4)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "DynamicSoftMarginLoss: `ref_emb` must be of the same length as `embeddings` (4) when no labels are "
            "given (row i of each is a matching pair), got 6."
        ),
    ):
        DynamicSoftMarginLoss()(emb, ref_emb=_batch(22, n=6)[0])


# --------------------------------------------------------------------------------------------- PML


def _pml_runs(options: dict, xs: list[float]) -> bool:
    """PML's histogram has num_bins nodes: it indexes past them for x >= -min_val - delta or x < min_val."""
    min_val = options.get("min_val", -2.0)
    delta = 2 * abs(min_val) / options.get("num_bins", 10)
    return min(xs) >= min_val and max(xs) < -min_val - delta


@pytest.mark.parametrize("options", OPTIONS[:2])
def test_pml_parity_on_a_first_call(options: dict) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    compared = 0
    for seed in range(8):
        emb, labels = _batch(seed + 30)
        if not _pml_runs(options, ref.triplet_differences(emb, labels)):
            with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
                pml_losses.DynamicSoftMarginLoss(**options)(emb, labels)
            continue
        compared += 1
        assert DynamicSoftMarginLoss(**options)(emb, labels).item() == pytest.approx(
            pml_losses.DynamicSoftMarginLoss(**options)(emb, labels).item(), abs=1e-12
        )
        triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
        assert DynamicSoftMarginLoss(**options)(emb, labels, triplets).item() == pytest.approx(
            pml_losses.DynamicSoftMarginLoss(**options)(emb, labels, triplets).item(), abs=1e-12
        )
        ref_emb = emb + 0.1 * _batch(seed + 60)[0]
        assert DynamicSoftMarginLoss(**options)(emb, ref_emb=ref_emb).item() == pytest.approx(
            pml_losses.DynamicSoftMarginLoss(**options)(emb, ref_emb=ref_emb).item(), abs=1e-12
        )
    assert compared >= 2


def test_pml_momentum_weighs_unnormalised_counts() -> None:
    # on a second call PML mixes (1 - momentum) * histogram with momentum * raw counts; the authors' code and
    # this loss normalise the batch's histogram first
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    batches = [_batch(seed + 40) for seed in range(3)]
    usable = [b for b in batches if _pml_runs({}, ref.triplet_differences(*b))]
    assert len(usable) >= 2
    ours, theirs, oracle = DynamicSoftMarginLoss(), pml_losses.DynamicSoftMarginLoss(), ref.RunningCDF()
    with torch.no_grad():
        for emb, labels in usable[:2]:
            a, b = ours(emb, labels).item(), theirs(emb, labels).item()
            assert a == pytest.approx(oracle.loss(ref.triplet_differences(emb, labels)), rel=1e-10)
    assert a != pytest.approx(b, rel=1e-6)
