"""BaseMetricLossFunction: the two ways to implement a loss, regularisation, reduction and input checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.indices import all_pairs
from dmlkit.losses import BaseMetricLossFunction, TripletMarginLoss
from dmlkit.reducers import MeanReducer, ThresholdReducer
from dmlkit.regularizers import LpRegularizer
from dmlkit.types import TermKind, Terms

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _emb(seed: int = 0, n: int = 6, d: int = 4) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class PositiveDistanceLoss(BaseMetricLossFunction):
    """pytorch-metric-learning style: the distance of every positive pair, reduced per pair."""

    def compute_loss(
        self, embeddings: Tensor, labels: Any, indices_tuple: Any, ref_emb: Tensor, ref_labels: Any
    ) -> dict[str, dict[str, Any]]:
        a1, p, _, _ = self.pairs(labels, indices_tuple, ref_labels)
        mat = self.distance(embeddings, ref_emb)
        return {"loss": {"losses": mat[a1, p], "indices": (a1, p), "reduction_type": "pos_pair"}}


class TwoGroupLoss(BaseMetricLossFunction):
    """dmlkit style: two named groups, per element and already reduced."""

    def compute_terms(
        self, embeddings: Tensor, labels: Any, indices_tuple: Any, ref_emb: Tensor, ref_labels: Any
    ) -> Mapping[str, Terms]:
        norms = embeddings.norm(dim=1)
        idx = torch.arange(embeddings.shape[0])
        return {"norms": Terms(norms, idx), "mean_sq": Terms.reduced((embeddings**2).mean())}


class PMLStyleZeroLoss(BaseMetricLossFunction):
    def compute_loss(
        self, embeddings: Tensor, labels: Any, indices_tuple: Any, ref_emb: Tensor, ref_labels: Any
    ) -> dict[str, dict[str, Any]]:
        return {"loss": {"losses": 0, "indices": None, "reduction_type": "already_reduced"}}


class PMLStyleEmptyPairLoss(BaseMetricLossFunction):
    def compute_loss(
        self, embeddings: Tensor, labels: Any, indices_tuple: Any, ref_emb: Tensor, ref_labels: Any
    ) -> dict[str, dict[str, Any]]:
        return {"loss": {"losses": 0, "indices": None, "reduction_type": "pos_pair"}}


class NothingImplemented(BaseMetricLossFunction):
    pass


def test_pml_style_compute_loss() -> None:
    emb = _emb()
    loss = PositiveDistanceLoss(distance=LpDistance(normalize_embeddings=False))(emb, LABELS)
    a1, p, _, _ = all_pairs(LABELS)
    expected = torch.stack([torch.linalg.vector_norm(emb[i] - emb[j]) for i, j in zip(a1, p, strict=True)]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_pml_style_compute_loss_with_reducer() -> None:
    emb = _emb(1)
    loss_fn = PositiveDistanceLoss(distance=LpDistance(normalize_embeddings=False), reducer=ThresholdReducer(high=2.5))
    a1, p, _, _ = all_pairs(LABELS)
    d = torch.linalg.vector_norm(emb[a1] - emb[p], dim=1)
    assert bool((d >= 2.5).any()) and bool((d < 2.5).any())
    torch.testing.assert_close(loss_fn(emb, LABELS), d[d < 2.5].mean())


def test_compute_terms_groups_are_reduced_and_summed() -> None:
    emb = _emb(2).requires_grad_()
    loss = TwoGroupLoss()(emb, LABELS)
    expected = emb.norm(dim=1).mean() + (emb**2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all())


def test_subclass_implementing_nothing_raises() -> None:
    with pytest.raises(NotImplementedError, match=re.escape("NothingImplemented must implement compute_terms().")):
        NothingImplemented()(_emb(), LABELS)


def test_pml_style_zero_loss_value() -> None:
    assert PMLStyleZeroLoss()(_emb(), LABELS).item() == 0.0


def test_pml_style_zero_loss_is_graph_connected() -> None:
    emb = _emb().requires_grad_()
    loss = PMLStyleZeroLoss()(emb, LABELS)
    loss.backward()
    assert emb.grad is not None and bool((emb.grad == 0).all())


def test_pml_style_zero_losses_with_pair_reduction() -> None:
    emb = _emb().requires_grad_()
    loss = PMLStyleEmptyPairLoss()(emb, LABELS)
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None and bool((emb.grad == 0).all())


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_embedding_regularizer_adds_weighted_penalty(weight: float) -> None:
    emb = _emb(3)
    plain = TripletMarginLoss(margin=0.5)(emb, LABELS)
    loss = TripletMarginLoss(margin=0.5, embedding_regularizer=LpRegularizer(), embedding_reg_weight=weight)
    penalty = torch.linalg.vector_norm(emb, dim=1).mean()
    torch.testing.assert_close(loss(emb, LABELS), plain + weight * penalty, rtol=1e-12, atol=1e-12)


def test_embedding_regularizer_counts_even_without_triplets() -> None:
    emb = _emb(4)
    loss = TripletMarginLoss(embedding_regularizer=LpRegularizer(power=2), embedding_reg_weight=0.25)
    expected = 0.25 * (torch.linalg.vector_norm(emb, dim=1) ** 2).mean()
    torch.testing.assert_close(loss(emb, torch.arange(6)), expected)


def test_embedding_regularizer_matches_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    emb = _emb(5)
    ours = TripletMarginLoss(margin=0.3, embedding_regularizer=LpRegularizer(), embedding_reg_weight=0.7)
    theirs = pml_losses.TripletMarginLoss(
        margin=0.3, embedding_regularizer=pml_regularizers.LpRegularizer(), embedding_reg_weight=0.7
    )
    torch.testing.assert_close(ours(emb, LABELS), theirs(emb, LABELS), rtol=0, atol=1e-6)


def test_invalid_distance_type() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("TripletMarginLoss: `distance` must be a dmlkit distance (e.g. LpDistance()), got 'str'."),
    ):
        TripletMarginLoss(distance="lp")  # type: ignore[arg-type]


def test_invalid_reducer_type() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("TripletMarginLoss: `reducer` must be a dmlkit reducer (e.g. MeanReducer()), got 'type'."),
    ):
        TripletMarginLoss(reducer=MeanReducer)  # type: ignore[arg-type]


def test_negative_regularizer_weight() -> None:
    with pytest.raises(
        ValueError, match=re.escape("TripletMarginLoss: `embedding_reg_weight` must be a number >= 0, got -1.")
    ):
        TripletMarginLoss(embedding_reg_weight=-1)


def test_defaults_are_fresh_instances() -> None:
    a, b = TripletMarginLoss(), TripletMarginLoss()
    assert isinstance(a.distance, LpDistance) and a.distance is not b.distance
    assert a.reducer is not b.reducer
    custom = CosineSimilarity()
    assert TripletMarginLoss(distance=custom).distance is custom


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64])
def test_labels_of_other_integer_dtypes(dtype: torch.dtype) -> None:
    emb = _emb(6)
    expected = TripletMarginLoss(margin=0.4)(emb, LABELS)
    torch.testing.assert_close(TripletMarginLoss(margin=0.4)(emb, LABELS.to(dtype)), expected)


def test_labels_or_indices_tuple_required() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("PositiveDistanceLoss: `labels` must be given (or an `indices_tuple` from a miner), got None."),
    ):
        PositiveDistanceLoss()(_emb())


def test_indices_tuple_without_labels() -> None:
    emb = _emb(7)
    pairs = all_pairs(LABELS)
    loss_fn = PositiveDistanceLoss()
    torch.testing.assert_close(loss_fn(emb, indices_tuple=pairs), loss_fn(emb, LABELS))


def test_loss_without_reference_support_rejects_ref_emb() -> None:
    class NoRef(PositiveDistanceLoss):
        supports_ref_emb = False

    emb = _emb()
    with pytest.raises(
        ValueError, match=re.escape("NoRef: `ref_emb` must be None: this loss does not support a reference set")
    ):
        NoRef()(emb, LABELS, ref_emb=emb, ref_labels=LABELS)


def test_bad_indices_tuple_is_reported_with_the_loss_name() -> None:
    x = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=re.escape("TripletMarginLoss: `indices_tuple[1]` must be indices in [0, 6)")):
        TripletMarginLoss()(_emb(), LABELS, indices_tuple=(x, x + 6, x))


def test_terms_kind_reaches_reducer() -> None:
    seen: list[TermKind] = []

    class Spy(MeanReducer):
        def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
            seen.append(terms.kind)
            return super().reduce(terms, embeddings, labels)

    PositiveDistanceLoss(reducer=Spy())(_emb(), LABELS)
    TripletMarginLoss(reducer=Spy(), margin=2.0)(_emb(), LABELS)
    assert seen == [TermKind.POS_PAIR, TermKind.TRIPLET]


# ----------------------------------------------------------------------------- described pairs (LabelPairs)


def _described_problem() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(4)
    emb, ref = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    labels, ref_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    return emb, labels, ref, ref_labels, torch.tensor([0, 1, 2, 3, 4, 5])


def test_label_pairs_equal_their_listing_for_any_loss() -> None:
    from dmlkit.indices import list_label_pairs
    from dmlkit.losses import ContrastiveLoss, NTXentLoss
    from dmlkit.types import LabelPairs

    emb, labels, ref, ref_labels, own = _described_problem()
    listed = list_label_pairs(labels, ref_labels, LabelPairs(own))
    # brute force: same label and not the excluded slot / different label
    kinds = (((listed.anchors_pos, listed.positives), True), ((listed.anchors_neg, listed.negatives), False))
    for (a, p), expected_same in kinds:
        got = sorted(zip(a.tolist(), p.tolist(), strict=True))
        want = sorted(
            (i, j) for i in range(6) for j in range(9)
            if (labels[i] == ref_labels[j]) == expected_same and not (expected_same and j == int(own[i]))
        )
        assert got == want
    losses = (
        TripletMarginLoss(margin=0.5),
        TripletMarginLoss(margin=0.5, chunk_size=2),  # tiled from the description
        TripletMarginLoss(margin=0.5, chunk_size=2, swap=True),  # a path that reads lists
        TripletMarginLoss(margin=0.5, chunk_size=2, triplets_per_anchor=2, generator=torch.Generator().manual_seed(0)),
        ContrastiveLoss(),
        ContrastiveLoss(chunk_size=2),
        NTXentLoss(temperature=0.2),
        NTXentLoss(temperature=0.2, chunk_size=2),
    )
    for loss in losses:
        if getattr(loss, "generator", None) is not None:
            loss.generator.manual_seed(0)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        described = loss(x1, labels, LabelPairs(own), ref, ref_labels)
        if getattr(loss, "generator", None) is not None:
            loss.generator.manual_seed(0)
        explicit = loss(x2, labels, tuple(listed), ref, ref_labels)
        described.backward()
        explicit.backward()
        assert described.item() == pytest.approx(explicit.item(), rel=1e-12, abs=1e-15)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)


def test_malformed_label_pairs_are_rejected() -> None:
    from dmlkit.types import LabelPairs

    emb, labels, ref, ref_labels, own = _described_problem()
    loss = TripletMarginLoss()
    expected = r"LabelPairs\(excluded_ref\) with one integer reference index per query \(6\)"
    with pytest.raises(ValueError, match=expected):
        loss(emb, labels, LabelPairs(own[:3]), ref, ref_labels)
    with pytest.raises(ValueError, match=r"LabelPairs indices in \[0, 9\)"):
        loss(emb, labels, LabelPairs(own + 5), ref, ref_labels)
    with pytest.raises(ValueError, match=r"`labels` must be given with a LabelPairs indices_tuple"):
        loss(emb, None, LabelPairs(own), ref, ref_labels)
