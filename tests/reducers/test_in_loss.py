"""Reducers plugged into losses give the same loss and gradients as pytorch-metric-learning's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.losses import BaseMetricLossFunction, TripletMarginLoss
from dmlkit.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    ClassWeightedReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)
from dmlkit.types import TermKind, Terms
from tests.reference.reducers import mean, per_anchor_means

WEIGHTS = [0.5, 2.0, 3.5, 1.0]

# name -> (dmlkit reducer factory, PML reducer factory taking the PML reducers module)
PAIRS: dict[str, tuple[Callable[[], BaseReducer], Callable[[Any], Any]]] = {
    "mean": (MeanReducer, lambda r: r.MeanReducer()),
    "sum": (SumReducer, lambda r: r.SumReducer()),
    "avg_non_zero": (AvgNonZeroReducer, lambda r: r.AvgNonZeroReducer()),
    "threshold_low": (lambda: ThresholdReducer(low=0.1), lambda r: r.ThresholdReducer(low=0.1)),
    "threshold_both": (lambda: ThresholdReducer(low=0.05, high=0.3), lambda r: r.ThresholdReducer(low=0.05, high=0.3)),
    "class_weighted": (lambda: ClassWeightedReducer(WEIGHTS), lambda r: r.ClassWeightedReducer(torch.tensor(WEIGHTS))),
    "multiple": (
        lambda: MultipleReducers({"loss": ThresholdReducer(low=0.1)}),
        lambda r: r.MultipleReducers({"loss": r.ThresholdReducer(low=0.1)}),
    ),
    "multiple_default": (
        lambda: MultipleReducers({}, default_reducer=SumReducer()),
        lambda r: r.MultipleReducers({}, default_reducer=r.SumReducer()),
    ),
}


def _data(seed: int, n: int = 12) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, 5, generator=g, dtype=torch.float64)
    # Unbalanced classes, so anchors have different numbers of pairs and triplets (per-anchor != global mean).
    labels = torch.randint(0, 4, (n,), generator=g)
    return embeddings, labels


def _run(loss: Any, embeddings: Tensor, labels: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
    x = embeddings.clone().requires_grad_()
    extra = dict(kwargs)
    if "ref_emb" in extra:
        extra["ref_emb"] = extra["ref_emb"].clone().requires_grad_()
    value = loss(x, labels, **extra)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("name", list(PAIRS))
def test_triplet_margin_parity(name: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="PML parity needs PML")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    ours_factory, pml_factory = PAIRS[name]
    embeddings, labels = _data(0)
    ours = _run(TripletMarginLoss(margin=0.2, reducer=ours_factory()), embeddings, labels)
    theirs = _run(pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_factory(pml_reducers)), embeddings, labels)
    assert ours[0].item() > 0
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["mean", "threshold_low", "class_weighted", "multiple"])
def test_triplet_margin_parity_with_ref_emb(name: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="PML parity needs PML")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    ours_factory, pml_factory = PAIRS[name]
    embeddings, labels = _data(1, n=8)
    ref_emb, ref_labels = _data(2, n=10)
    kwargs = {"ref_emb": ref_emb, "ref_labels": ref_labels}
    ours = _run(TripletMarginLoss(margin=0.2, reducer=ours_factory()), embeddings, labels, **kwargs)
    theirs = _run(
        pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_factory(pml_reducers)), embeddings, labels, **kwargs
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)


def test_do_nothing_returns_the_triplet_terms() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="PML parity needs PML")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    embeddings, labels = _data(3)
    ours = TripletMarginLoss(margin=0.2, reducer=DoNothingReducer())(embeddings, labels)
    theirs = pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_reducers.DoNothingReducer())(embeddings, labels)
    assert set(ours) == set(theirs) == {"loss"}
    assert ours["loss"].kind is TermKind.TRIPLET and theirs["loss"]["reduction_type"] == "triplet"
    # The triplets may be listed in another order: compare (anchor, value) pairs as sorted lists.
    ours_pairs = sorted(zip(ours["loss"].anchors.tolist(), ours["loss"].values.tolist(), strict=True))
    theirs_pairs = sorted(zip(theirs["loss"]["indices"][0].tolist(), theirs["loss"]["losses"].tolist(), strict=True))
    assert [a for a, _ in ours_pairs] == [a for a, _ in theirs_pairs]
    assert [v for _, v in ours_pairs] == pytest.approx([v for _, v in theirs_pairs], abs=1e-6)


def test_per_anchor_with_triplets_matches_the_oracle_on_pml_terms() -> None:
    # PML's PerAnchorReducer rejects triplets; compare with the per-anchor oracle applied to PML's triplet losses.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="PML parity needs PML")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    embeddings, labels = _data(4)
    ours = TripletMarginLoss(margin=0.2, reducer=PerAnchorReducer())(embeddings, labels)
    info = pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_reducers.DoNothingReducer())(embeddings, labels)["loss"]
    expected = mean(per_anchor_means(info["losses"].tolist(), info["indices"][0].tolist(), embeddings.shape[0]))
    assert ours.item() == pytest.approx(expected, abs=1e-6)


def test_divisor_reducer_in_a_loss_that_sets_the_divisor() -> None:
    class _HalvedSum(BaseMetricLossFunction):
        def compute_terms(self, embeddings: Tensor, *args: Any) -> Mapping[str, Terms]:
            values = embeddings.pow(2).sum(dim=1)
            return {"loss": Terms(values, torch.arange(embeddings.shape[0]), divisor=2 * embeddings.shape[0])}

    embeddings, labels = _data(5)
    got = _HalvedSum(reducer=DivisorReducer())(embeddings, labels)
    assert got.item() == pytest.approx(embeddings.pow(2).sum().item() / 24, rel=1e-12)


class _PairHinge(BaseMetricLossFunction):
    """``d(a, p)`` for positive pairs and ``relu(1 - d(a, n))`` for negative pairs, as two named groups."""

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        a1, p, a2, n = self.pairs(labels, indices_tuple, ref_labels)
        mat = self.distance(embeddings, ref_emb)
        return {
            "pos_loss": Terms(F.relu(mat[a1, p]), a1, TermKind.POS_PAIR),
            "neg_loss": Terms(F.relu(1 - mat[a2, n]), a2, TermKind.NEG_PAIR),
        }


PAIR_REDUCERS: dict[str, tuple[Callable[[], BaseReducer], Callable[[Any], Any]]] = {
    "per_anchor": (PerAnchorReducer, lambda r: r.PerAnchorReducer()),
    "per_anchor_avg_non_zero": (
        lambda: PerAnchorReducer(AvgNonZeroReducer()),
        lambda r: r.PerAnchorReducer(r.AvgNonZeroReducer()),
    ),
    "class_weighted": (lambda: ClassWeightedReducer(WEIGHTS), lambda r: r.ClassWeightedReducer(torch.tensor(WEIGHTS))),
    "avg_non_zero": (AvgNonZeroReducer, lambda r: r.AvgNonZeroReducer()),
    "multiple": (
        lambda: MultipleReducers({"pos_loss": SumReducer()}, default_reducer=PerAnchorReducer()),
        lambda r: r.MultipleReducers({"pos_loss": r.SumReducer()}, default_reducer=r.PerAnchorReducer()),
    ),
}


@pytest.mark.parametrize("name", list(PAIR_REDUCERS))
def test_pair_loss_parity(name: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="PML parity needs PML")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    ours_factory, pml_factory = PAIR_REDUCERS[name]
    embeddings, labels = _data(6)
    ours = _run(_PairHinge(reducer=ours_factory()), embeddings, labels)
    pml_loss = pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=1, reducer=pml_factory(pml_reducers))
    theirs = _run(pml_loss, embeddings, labels)
    assert ours[0].item() > 0
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)
