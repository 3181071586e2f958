"""FastAPLoss against the float64 oracle in tests/reference/fast_ap.py, autograd, edge cases and PML."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import Tensor

import dmlkit.losses.fast_ap as fast_ap_module
from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.fast_ap import FastAPLoss
from dmlkit.miners import TripletMarginMiner
from tests.reference import fast_ap as ref


def _batch(seed: int, n: int = 12, d: int = 5, classes: int = 4, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _mined(emb: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    assert triplets[0].numel() > 0
    return triplets


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("num_bins", [1, 3, 10, 25])
@pytest.mark.parametrize("power", [1, 2])
def test_matches_oracle(num_bins: int, power: int) -> None:
    loss_fn = FastAPLoss(num_bins=num_bins, distance=LpDistance(power=power))
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.fast_ap_loss(emb, labels, num_bins, power)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_per_query_values_match_oracle() -> None:
    emb, labels = _batch(3)
    labels[0] = 99  # a query without positive contributes nothing
    terms = FastAPLoss().compute_terms(emb, labels, None, emb, labels)["loss"]
    expected = ref.fast_ap_values(emb, labels)
    assert 0 not in expected and terms.anchors.tolist() == sorted(expected)
    assert terms.values.tolist() == pytest.approx([expected[q] for q in sorted(expected)], rel=1e-10)


def test_hand_computed() -> None:
    # 1-D unit vectors: query 0 at angle 0; positive 1 and negative 2 at squared distances 0.5 and 0.2 -> the
    # negative ranks first. num_bins=4 on [0, 4]: nodes 0, 1, 2, 3, 4 (delta 1).
    def unit(sq_dist: float) -> list[float]:
        cos = 1 - sq_dist / 2
        return [cos, (1 - cos**2) ** 0.5]

    emb = torch.tensor([[1.0, 0.0], unit(0.5), unit(0.2)], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    values = FastAPLoss(num_bins=4).compute_terms(emb, labels, None, emb, labels)["loss"].values
    # query 0: h+ = [0.5, 0.5, 0...], h- = [0.8, 0.2, ...]; H+ = [0.5, 1], H = [1.3, 2]
    # FastAP = (0.5 * 0.5 / 1.3 + 0.5 * 1 / 2) / 1
    assert values[0].item() == pytest.approx(1 - (0.25 / 1.3 + 0.25), rel=1e-12)


def test_miner_weights_queries() -> None:
    emb, labels = _batch(4, n=16)
    triplets = _mined(emb, labels)
    weights = ref.miner_weights([t.tolist() for t in triplets], 16)
    expected = ref.fast_ap_loss(emb, labels, weights=weights)
    assert FastAPLoss()(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    pairs = (triplets[0], triplets[1], triplets[0], triplets[2])
    weights = ref.miner_weights([t.tolist() for t in pairs], 16)
    assert FastAPLoss()(emb, labels, pairs).item() == pytest.approx(
        ref.fast_ap_loss(emb, labels, weights=weights), rel=1e-10
    )


def test_reference_set() -> None:
    emb, labels = _batch(5, n=6)
    ref_emb, ref_labels = _batch(6, n=15)
    expected = ref.fast_ap_loss(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    got = FastAPLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # a copy of the batch as reference is another set: each query now also retrieves its own copy
    copy = FastAPLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels.clone()).item()
    assert copy == pytest.approx(ref.fast_ap_loss(emb, labels, ref_emb=emb, ref_labels=labels), rel=1e-10)
    assert copy != pytest.approx(FastAPLoss()(emb, labels).item(), rel=1e-6)


def test_reference_set_miner_weights_count_anchors_only() -> None:
    emb, labels = _batch(7, n=5, classes=2)
    ref_emb, ref_labels = _batch(8, n=9, classes=2)
    triplets = tuple(TripletMarginMiner(margin=2.0)(emb, labels, ref_emb, ref_labels))
    weights = ref.miner_weights([t.tolist() for t in triplets], 5, anchors_only=True)
    expected = ref.fast_ap_loss(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels, weights=weights)
    got = FastAPLoss()(emb, labels, triplets, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("num_bins", [2, 10])
def test_gradcheck(num_bins: int) -> None:
    emb, labels = _batch(9, n=7, d=3, classes=3)
    loss_fn = FastAPLoss(num_bins=num_bins)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(10, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(11, n=6, d=3, classes=2)
    loss_fn = FastAPLoss(num_bins=5)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


def test_blocked_histogram_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(12, n=20)
    x1 = emb.clone().requires_grad_()
    one = FastAPLoss()(x1, labels)
    one.backward()
    monkeypatch.setattr(fast_ap_module, "_BLOCK_ELEMENTS", 7)  # blocks of one row
    x2 = emb.clone().requires_grad_()
    blocked = FastAPLoss()(x2, labels)
    blocked.backward()
    assert blocked.item() == pytest.approx(one.item(), rel=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(13)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = FastAPLoss()(emb, torch.arange(12))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_one_class_ranks_only_positives() -> None:
    emb = _batch(14)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("FastAPLoss: every label in the batch is 3")):
        loss = FastAPLoss()(emb, torch.full((12,), 3))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert emb.grad.abs().max().item() < 1e-12


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = FastAPLoss()(emb, labels)
    loss.backward()
    # every distance is 0: one positive among the 5 retrieved items, FastAP = 1/5
    assert loss.item() == pytest.approx(1 - 1 / 5, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(15, scale=scale)
    emb = emb.float().requires_grad_()
    loss = FastAPLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


def test_error_num_bins() -> None:
    with pytest.raises(ValueError, match=re.escape("FastAPLoss: `num_bins` must be an integer >= 1, got 0.")):
        FastAPLoss(num_bins=0)
    with pytest.raises(TypeError, match=re.escape("FastAPLoss: `num_bins` must be an integer, got 2.5.")):
        FastAPLoss(num_bins=2.5)  # type: ignore[arg-type]


def test_error_distance() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "FastAPLoss: `distance` must be an LpDistance (Euclidean on unit vectors), got 'CosineSimilarity'."
        ),
    ):
        FastAPLoss(distance=CosineSimilarity())
    with pytest.raises(
        ValueError,
        match=re.escape(
            "FastAPLoss: `distance` must be an LpDistance with p=2 and normalize_embeddings=True, "
            "got 'p=2, normalize_embeddings=False'."
        ),
    ):
        FastAPLoss(distance=LpDistance(normalize_embeddings=False))


def test_error_without_labels() -> None:
    emb, labels = _batch(16)
    with pytest.raises(
        ValueError, match=re.escape("FastAPLoss: `labels` must be given (queries are ranked by label), got None.")
    ):
        FastAPLoss()(emb, indices_tuple=_mined(emb, labels))


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("num_bins", [3, 10])
@pytest.mark.parametrize("power", [1, 2])
def test_pml_parity(num_bins: int, power: int) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    ours = FastAPLoss(num_bins=num_bins, distance=LpDistance(power=power))
    theirs = pml_losses.FastAPLoss(num_bins=num_bins, distance=pml_distances.LpDistance(power=power))
    for seed in range(3):
        emb, labels = _batch(seed + 20, n=16)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-10)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
        triplets = _mined(emb, labels)
        assert ours(emb, labels, triplets).item() == pytest.approx(theirs(emb, labels, triplets).item(), abs=1e-10)


def test_pml_rejects_a_reference_set() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(30, n=6)
    ref_emb, ref_labels = _batch(31, n=8)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml_losses.FastAPLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert torch.isfinite(FastAPLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels))
