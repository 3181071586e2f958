"""SelfSupervisedLoss against the naive oracles, the wrapped loss called by hand, autograd, errors and PML."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.losses import BaseMetricLossFunction, TripletMarginLoss
from dmlkit.reducers import MeanReducer
from dmlkit.types import TermKind, Terms
from dmlkit.wrappers import SelfSupervisedLoss
from tests.reference import triplet as tref
from tests.reference import wrappers as ref


def _views(seed: int, n: int = 6, d: int = 4, noise: float = 0.5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(n, d, generator=g, dtype=torch.float64)
    return first, first + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def _contrastive_cls() -> type[BaseMetricLossFunction]:
    module = pytest.importorskip("dmlkit.losses.contrastive", reason="ContrastiveLoss is not available")
    return module.ContrastiveLoss


def _ntxent_cls() -> type[BaseMetricLossFunction]:
    module = pytest.importorskip("dmlkit.losses.ntxent", reason="NTXentLoss is not available")
    return module.NTXentLoss


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["avg_non_zero", "mean"])
def test_triplet_symmetric_matches_oracle(seed: int, reduction: str) -> None:
    first, second = _views(seed)
    n = first.shape[0]
    reducer = MeanReducer() if reduction == "mean" else None
    value = SelfSupervisedLoss(TripletMarginLoss(margin=0.3, reducer=reducer))(first, second)
    rows = torch.cat([first, second]).tolist()
    labels = list(range(n)) * 2
    # one batch of 2n views: positives are the other view of the same sample, negatives every other view
    triplets = tref.all_triplets(labels)
    assert all(labels[a] == labels[p] and a != p for a, p, _ in triplets)
    assert len(triplets) == 2 * n * (2 * n - 2)
    values = tref.triplet_values(rows, triplets, 0.3)
    expected = sum(values) / len(values) if reduction == "mean" else tref.avg_non_zero(values)
    assert value.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_one_direction_matches_oracle(seed: int) -> None:
    first, second = _views(seed)
    n = first.shape[0]
    value = SelfSupervisedLoss(TripletMarginLoss(margin=0.3, reducer=MeanReducer()), symmetric=False)(first, second)
    # anchors are the first views; positive: the same sample's second view; negatives: other second views
    triplets = tref.all_triplets(list(range(n)), list(range(n)))
    assert triplets == [(a, a, m) for a in range(n) for m in range(n) if m != a]
    values = tref.triplet_values(first.tolist(), triplets, 0.3, ref_emb=second.tolist())
    assert value.item() == pytest.approx(sum(values) / len(values), abs=1e-10)


@pytest.mark.parametrize("symmetric", [True, False])
def test_contrastive_matches_oracle(symmetric: bool) -> None:
    cls = _contrastive_cls()
    first, second = _views(4, noise=0.3)
    n = first.shape[0]
    value = SelfSupervisedLoss(cls(pos_margin=0.05, neg_margin=1.2), symmetric=symmetric)(first, second)
    if symmetric:
        rows, ref_rows, labels, ref_labels = torch.cat([first, second]).tolist(), None, list(range(n)) * 2, None
    else:
        rows, ref_rows, labels, ref_labels = first.tolist(), second.tolist(), list(range(n)), list(range(n))
    a1, p, a2, neg = tref.all_pairs(labels, ref_labels)
    expected = ref.contrastive_loss(
        rows,
        ref_rows if ref_rows is not None else rows,
        list(zip(a1, p, strict=True)),
        list(zip(a2, neg, strict=True)),
        0.05,
        1.2,
    )
    assert value.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("symmetric", [True, False])
def test_equals_the_wrapped_loss_with_position_labels(symmetric: bool) -> None:
    first, second = _views(5)
    inner = TripletMarginLoss(margin=0.4)
    value = SelfSupervisedLoss(inner, symmetric=symmetric)(first, second)
    labels = torch.arange(first.shape[0])
    if symmetric:
        expected = inner(torch.cat([first, second]), torch.cat([labels, labels]))
    else:
        expected = inner(first, labels, ref_emb=second, ref_labels=labels.clone())
    assert value.item() == expected.item()


def test_gradcheck() -> None:
    first, second = _views(6, n=4, d=3)
    first.requires_grad_()
    second.requires_grad_()
    for symmetric in (True, False):
        loss = SelfSupervisedLoss(TripletMarginLoss(margin=0.5, smooth_loss=True), symmetric=symmetric)
        assert torch.autograd.gradcheck(loss, (first, second))


def test_one_direction_gradient_reaches_both_views() -> None:
    first, second = _views(7)
    first.requires_grad_()
    second.requires_grad_()
    SelfSupervisedLoss(TripletMarginLoss(margin=2.0), symmetric=False)(first, second).backward()
    assert first.grad is not None and second.grad is not None
    assert torch.any(first.grad != 0) and torch.any(second.grad != 0)


def test_identical_views_of_distinct_directions_cost_nothing() -> None:
    assert SelfSupervisedLoss(TripletMarginLoss(margin=0.1))(torch.eye(4), 2 * torch.eye(4)).item() == 0.0


class _NoReferenceLoss(BaseMetricLossFunction):
    supports_ref_emb = False

    def compute_terms(self, embeddings: Tensor, labels: Any, *args: Any) -> dict[str, Terms]:
        return {"loss": Terms(embeddings.sum(1) * labels, torch.arange(embeddings.shape[0]), TermKind.ELEMENT)}


def test_loss_without_reference_set_support_works_symmetrically() -> None:
    loss = SelfSupervisedLoss(_NoReferenceLoss(), symmetric=True)
    first, second = torch.ones(3, 2), torch.ones(3, 2)
    # labels [0, 1, 2, 0, 1, 2] times row sums of 2, averaged
    assert loss(first, second).item() == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("SelfSupervisedLoss: `loss` must be a dmlkit metric loss (e.g. NTXentLoss()), got Linear."),
    ):
        SelfSupervisedLoss(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("SelfSupervisedLoss: `symmetric` must be a bool, got str.")):
        SelfSupervisedLoss(TripletMarginLoss(), symmetric="yes")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=re.escape(
            "SelfSupervisedLoss: `loss` must be a loss that accepts a reference set (`supports_ref_emb` is True) "
            "when `symmetric` is False, got _NoReferenceLoss."
        ),
    ):
        SelfSupervisedLoss(_NoReferenceLoss(), symmetric=False)
    loss = SelfSupervisedLoss(TripletMarginLoss())
    with pytest.raises(
        ValueError,
        match=re.escape(
            "SelfSupervisedLoss: `ref_emb` must be of the shape of `embeddings` (4, 3), one view per sample, "
            "got shape (5, 3)."
        ),
    ):
        loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match=re.escape("SelfSupervisedLoss: `ref_emb` must be a torch.Tensor, got list.")):
        loss(torch.randn(4, 3), [[0.0] * 3] * 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("SelfSupervisedLoss: `embeddings` must be a 2-D tensor")):
        loss(torch.randn(4), torch.randn(4))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("kind", ["triplet", "contrastive", "ntxent"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_pml_parity(kind: str, symmetric: bool) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    if kind == "triplet":
        ours_inner, their_inner = TripletMarginLoss(margin=0.3), pml_losses.TripletMarginLoss(margin=0.3)
    elif kind == "contrastive":
        ours_inner = _contrastive_cls()(pos_margin=0.05, neg_margin=1.2)
        their_inner = pml_losses.ContrastiveLoss(pos_margin=0.05, neg_margin=1.2)
    else:
        ours_inner, their_inner = _ntxent_cls()(temperature=0.3), pml_losses.NTXentLoss(temperature=0.3)
    ours = SelfSupervisedLoss(ours_inner, symmetric=symmetric)
    theirs = pml_losses.SelfSupervisedLoss(their_inner, symmetric=symmetric)
    for seed in range(3):
        first, second = _views(seed, n=7)
        inputs_ours = [first.clone().requires_grad_(), second.clone().requires_grad_()]
        inputs_theirs = [first.clone().requires_grad_(), second.clone().requires_grad_()]
        value_ours = ours(*inputs_ours)
        value_theirs = theirs(*inputs_theirs)
        assert value_ours.item() == pytest.approx(value_theirs.item(), abs=1e-6)
        value_ours.backward()
        value_theirs.backward()
        for x_ours, x_theirs in zip(inputs_ours, inputs_theirs, strict=True):
            torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-6, rtol=0)
