"""SmoothAPLoss against the float64 oracle in tests/reference/smooth_ap.py, autograd, edge cases and PML."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

import dmlkit.losses.smooth_ap as smooth_ap_module
from dmlkit.distances import LpDistance
from dmlkit.losses.smooth_ap import SmoothAPLoss, soft_rank_sums
from dmlkit.miners import TripletMarginMiner
from tests.reference import fast_ap as weights_ref
from tests.reference import smooth_ap as ref


def _batch(seed: int, n: int = 12, d: int = 5, classes: int = 4, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _sorted_equal_classes(seed: int, per_class: int, classes: int, d: int = 6) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(per_class * classes, d, generator=g, dtype=torch.float64)
    return emb, torch.arange(classes).repeat_interleave(per_class)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_matches_oracle_with_unequal_classes_in_any_order(temperature: float) -> None:
    loss_fn = SmoothAPLoss(temperature=temperature)
    for seed in range(3):
        emb, labels = _batch(seed)
        counts = torch.bincount(labels)
        assert len(set(counts[counts > 0].tolist())) > 1  # PML would refuse these labels
        expected = ref.smooth_ap_loss(emb, labels, temperature)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_per_query_values_match_oracle() -> None:
    emb, labels = _batch(3)
    terms = SmoothAPLoss(temperature=0.2).compute_terms(emb, labels, None, emb, labels)["ap_loss"]
    expected = ref.smooth_ap_values(emb, labels, 0.2)
    assert terms.anchors.tolist() == list(range(12))
    assert terms.values.tolist() == pytest.approx([expected[q] for q in range(12)], rel=1e-10)


def test_hand_computed_ranks() -> None:
    # query 0's cosine similarities: to itself 1, to its positive (item 1) 0.6, to the negative (item 2) 0.8
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    values = SmoothAPLoss(temperature=tau).compute_terms(emb, labels, None, emb, labels)["ap_loss"].values

    def g(x: float) -> float:
        return float(torch.sigmoid(torch.tensor(x / tau, dtype=torch.float64)))

    # positives of query 0: itself (s = 1) and item 1 (s = 0.6); retrieval set: all three
    self_term = (1 + g(0.6 - 1)) / (1 + g(0.6 - 1) + g(0.8 - 1))
    item_term = (1 + g(1 - 0.6)) / (1 + g(1 - 0.6) + g(0.8 - 0.6))
    assert values[0].item() == pytest.approx(1 - (self_term + item_term) / 2, rel=1e-12)


def test_miner_weights_queries() -> None:
    emb, labels = _batch(4, n=16)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    weights = weights_ref.miner_weights([t.tolist() for t in triplets], 16)
    expected = ref.smooth_ap_loss(emb, labels, 0.05, weights=weights)
    assert SmoothAPLoss(temperature=0.05)(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def test_reference_set() -> None:
    emb, labels = _batch(5, n=5)
    ref_emb, ref_labels = _batch(6, n=14)
    labels[0] = 77  # no positive in the reference: contributes nothing
    expected = ref.smooth_ap_loss(emb, labels, 0.1, ref_emb=ref_emb, ref_labels=ref_labels)
    got = SmoothAPLoss(temperature=0.1)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    terms = SmoothAPLoss().compute_terms(emb, labels, None, ref_emb, ref_labels)["ap_loss"]
    assert 0 not in terms.anchors.tolist()


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_gradcheck(temperature: float) -> None:
    emb, labels = _batch(7, n=7, d=3, classes=3)
    loss_fn = SmoothAPLoss(temperature=temperature)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(8, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(9, n=6, d=3, classes=2)
    loss_fn = SmoothAPLoss(temperature=0.3)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


@pytest.mark.parametrize("columns", ["all", "mask", "table"])
def test_soft_rank_sums_equal_the_dense_cube(columns: str) -> None:
    # the blocked primitive against the (query x item x column) sigmoid tensor, value and gradient
    g = torch.Generator().manual_seed(10)
    scores = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) > 0.4
    rows, cols = torch.nonzero(torch.rand(5, 7, generator=g) > 0.5, as_tuple=True)
    weight = torch.ones(5, 7, dtype=torch.float64) if columns == "all" else mask.double()
    arg = {"all": None, "mask": mask, "table": smooth_ap_module.row_lists(*torch.nonzero(mask, as_tuple=True), 5)}

    def dense(s: Tensor) -> Tensor:
        cube = torch.sigmoid(s.unsqueeze(1) - s.unsqueeze(2))  # [q, i, j] = sigmoid(s[q, j] - s[q, i])
        return (cube * weight.unsqueeze(1)).sum(2)[rows, cols]

    x1, x2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    got, want = soft_rank_sums(x1, rows, cols, arg[columns]), dense(x2)
    assert torch.allclose(got, want, rtol=1e-12)
    upstream = torch.randn(rows.numel(), generator=g, dtype=torch.float64)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(
        lambda s: soft_rank_sums(s, rows, cols, arg[columns]), (scores.clone().requires_grad_(),)
    )


def test_blocked_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(11, n=10, classes=3)
    x1 = emb.clone().requires_grad_()
    one = SmoothAPLoss(temperature=0.1)(x1, labels)
    one.backward()
    monkeypatch.setattr(smooth_ap_module, "_BLOCK_ELEMENTS", 25)  # blocks of 2 or 3 pairs
    x2 = emb.clone().requires_grad_()
    blocked = SmoothAPLoss(temperature=0.1)(x2, labels)
    blocked.backward()
    assert blocked.item() == pytest.approx(one.item(), rel=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_in_the_reference_gives_zero_and_zero_gradient() -> None:
    emb, _ = _batch(12, n=4)
    ref_emb, _ = _batch(13, n=6)
    emb.requires_grad_()
    loss = SmoothAPLoss()(emb, torch.zeros(4, dtype=torch.long), ref_emb=ref_emb, ref_labels=torch.ones(6).long())
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_all_unique_labels_rank_the_query_itself() -> None:
    # each query's only positive is itself (similarity 1, ranked first up to the sigmoid's softness)
    emb, _ = _batch(14)
    labels = torch.arange(12)
    assert SmoothAPLoss(temperature=0.1)(emb, labels).item() == pytest.approx(
        ref.smooth_ap_loss(emb, labels, 0.1), rel=1e-10
    )


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = SmoothAPLoss()(emb, labels)
    loss.backward()
    # every difference is 0, sigmoid(0) = 1/2: AP = (1 + 1/2) / (1 + 5/2) for both positives of every query
    assert loss.item() == pytest.approx(1 - 1.5 / 3.5, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("temperature", [1e-6, 100.0])
def test_extreme_temperatures_stay_finite(temperature: float) -> None:
    emb, labels = _batch(15)
    emb = emb.float().requires_grad_()
    loss = SmoothAPLoss(temperature=temperature)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


def test_error_temperature() -> None:
    with pytest.raises(ValueError, match=re.escape("SmoothAPLoss: `temperature` must be a number > 0, got 0.")):
        SmoothAPLoss(temperature=0)


def test_error_distance() -> None:
    with pytest.raises(
        TypeError, match=re.escape("SmoothAPLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        SmoothAPLoss(distance=LpDistance())


def test_error_without_labels() -> None:
    emb, labels = _batch(16)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    with pytest.raises(
        ValueError, match=re.escape("SmoothAPLoss: `labels` must be given (queries are ranked by label), got None.")
    ):
        SmoothAPLoss()(emb, indices_tuple=triplets)


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("per_class", [2, 3, 4])
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_pml_parity_where_its_restriction_holds(per_class: int, temperature: float) -> None:
    # pytorch-metric-learning's SmoothAPLoss treats consecutive blocks of (batch / per_class) elements as the
    # classes, so it is right for sorted labels with as many classes as samples per class. It accumulates AP in
    # float32, hence the 1e-6 tolerance.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(2):
        emb, labels = _sorted_equal_classes(seed, per_class, per_class)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a = SmoothAPLoss(temperature=temperature)(x1, labels)
        b = pml_losses.SmoothAPLoss(temperature=temperature)(x2, labels)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
        triplets = tuple(TripletMarginMiner(margin=0.5)(emb, labels))
        assert SmoothAPLoss(temperature=temperature)(emb, labels, triplets).item() == pytest.approx(
            pml_losses.SmoothAPLoss(temperature=temperature)(emb, labels, triplets).item(), abs=1e-6
        )


def test_pml_differs_when_classes_are_not_consecutive_blocks() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _sorted_equal_classes(3, per_class=4, classes=2)
    expected = ref.smooth_ap_loss(emb, labels, 0.1)
    assert SmoothAPLoss(temperature=0.1)(emb, labels).item() == pytest.approx(expected, rel=1e-10)
    assert pml_losses.SmoothAPLoss(temperature=0.1)(emb, labels).item() != pytest.approx(expected, abs=1e-3)
    # it ignores which samples share a label: a permutation of the labels gives the same value
    shuffled = labels[torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])]
    assert pml_losses.SmoothAPLoss(temperature=0.1)(emb, shuffled).item() == pytest.approx(
        pml_losses.SmoothAPLoss(temperature=0.1)(emb, labels).item(), abs=1e-7
    )
    assert SmoothAPLoss(temperature=0.1)(emb, shuffled).item() == pytest.approx(
        ref.smooth_ap_loss(emb, shuffled, 0.1), rel=1e-10
    )


def test_pml_refuses_unequal_class_sizes() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(17)
    with pytest.raises(ValueError, match="same number of elements"):
        pml_losses.SmoothAPLoss()(emb, labels)
    assert SmoothAPLoss()(emb, labels).item() == pytest.approx(ref.smooth_ap_loss(emb, labels), rel=1e-10)
