from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dmlkit.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    ClassWeightedReducer,
    MeanReducer,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, NUM_EMBEDDINGS, make_group
from tests.reference.reducers import mean, per_anchor_means, threshold_mean, total

TUPLE_KINDS = [TermKind.POS_PAIR, TermKind.NEG_PAIR, TermKind.TRIPLET]

INNER: list[tuple[Callable[[], BaseReducer], Callable[[list[float]], float]]] = [
    (MeanReducer, mean),
    (SumReducer, total),
    (AvgNonZeroReducer, lambda v: threshold_mean(v, low=0)),
    (lambda: ThresholdReducer(low=0.3, high=1.5), lambda v: threshold_mean(v, 0.3, 1.5)),
]


def _row_mean(x: torch.Tensor, num_per_row: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=1) / num_per_row.clamp(min=1)


def _row_max(x: torch.Tensor, num_per_row: torch.Tensor) -> torch.Tensor:
    return x.max(dim=1).values


@pytest.mark.parametrize("kind", TUPLE_KINDS)
@pytest.mark.parametrize("inner", range(len(INNER)))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(kind: TermKind, inner: int, seed: int) -> None:
    make_inner, reduce_oracle = INNER[inner]
    g = make_group(kind, seed)
    got = PerAnchorReducer(make_inner())(g.terms, g.embeddings, g.labels)
    expected = reduce_oracle(per_anchor_means(g.values, g.anchors, NUM_EMBEDDINGS))
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hand_computed_anchors_without_pairs_count_as_zero() -> None:
    # Anchor 0: mean(1, 3) = 2; anchor 1: 4; anchors 2 and 3: no pairs -> 0.  Mean over 4 anchors = 1.5.
    terms = Terms(torch.tensor([1.0, 3.0, 4.0]), torch.tensor([0, 0, 1]), TermKind.NEG_PAIR)
    assert PerAnchorReducer()(terms, torch.zeros(4, 2)).item() == 1.5
    assert PerAnchorReducer(AvgNonZeroReducer())(terms, torch.zeros(4, 2)).item() == 3.0


@pytest.mark.parametrize("inner", [SumReducer, AvgNonZeroReducer])
def test_element_terms_go_straight_to_the_inner_reducer(inner: Callable[[], BaseReducer]) -> None:
    g = make_group(TermKind.ELEMENT, 2)
    # Anchors repeat here, yet element values are not averaged per anchor.
    terms = Terms(g.terms.values, torch.zeros_like(g.terms.anchors), TermKind.ELEMENT)
    got = PerAnchorReducer(inner())(terms, g.embeddings, g.labels)
    torch.testing.assert_close(got, inner()(terms, g.embeddings, g.labels), rtol=0, atol=0)


def test_default_inner_reducer_is_a_fresh_mean() -> None:
    first, second = PerAnchorReducer(), PerAnchorReducer()
    assert isinstance(first.reducer, MeanReducer) and first.reducer is not second.reducer
    assert first.aggregation_func is None


def test_more_pairs_than_embeddings_per_anchor() -> None:
    # With a reference set larger than the batch an anchor can have more pairs than the batch has rows.
    values = torch.arange(1.0, 11.0, dtype=torch.float64)
    anchors = torch.tensor([0] * 8 + [2] * 2)
    terms = Terms(values, anchors, TermKind.POS_PAIR)
    embeddings = torch.zeros(3, 2, dtype=torch.float64)
    expected = mean(per_anchor_means(values.tolist(), anchors.tolist(), 3))  # (4.5 + 0 + 9.5) / 3
    assert PerAnchorReducer()(terms, embeddings).item() == pytest.approx(expected)
    assert PerAnchorReducer(aggregation_func=_row_mean)(terms, embeddings).item() == pytest.approx(expected)
    assert PerAnchorReducer(aggregation_func=_row_max)(terms, embeddings).item() == pytest.approx((8 + 0 + 10) / 3)


def test_repeated_pairs_each_count() -> None:
    # The same (anchor, other) pair listed twice counts twice, as in every other reducer.
    terms = Terms(torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), TermKind.POS_PAIR)
    assert PerAnchorReducer()(terms, torch.zeros(1, 2)).item() == 2.0
    assert PerAnchorReducer(aggregation_func=_row_mean)(terms, torch.zeros(1, 2)).item() == 2.0


def test_aggregation_func_arguments() -> None:
    seen: dict[str, Any] = {}

    def spy(x: torch.Tensor, num_per_row: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["num_per_row"] = x.clone(), num_per_row.clone()
        return _row_mean(x, num_per_row)

    terms = Terms(torch.tensor([1.0, 3.0, 4.0]), torch.tensor([2, 0, 2]), TermKind.POS_PAIR)
    PerAnchorReducer(aggregation_func=spy)(terms, torch.zeros(3, 2))
    assert seen["num_per_row"].tolist() == [1, 0, 2] and seen["num_per_row"].dtype == torch.int64
    assert seen["x"].tolist() == [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 4.0, 0.0]]


@pytest.mark.parametrize("kind", TUPLE_KINDS)
@pytest.mark.parametrize("aggregation_func", [None, _row_mean, _row_max])
def test_gradcheck(kind: TermKind, aggregation_func: Any) -> None:
    g = make_group(kind, 3, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    fn = PerAnchorReducer(aggregation_func=aggregation_func)
    assert torch.autograd.gradcheck(lambda v: fn(Terms(v, g.terms.anchors, kind), g.embeddings), (values,))


class _LargestTensor(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.numel = max(self.numel, out.numel())
        return out


def test_memory_is_linear_in_the_number_of_pairs() -> None:
    n = 500
    g = torch.Generator().manual_seed(0)
    anchors = torch.randint(0, n, (40,), generator=g)
    terms = Terms(torch.rand(40, generator=g, dtype=torch.float64), anchors, TermKind.NEG_PAIR)
    embeddings = torch.zeros(n, 2, dtype=torch.float64)
    with _LargestTensor() as mode:
        PerAnchorReducer()(terms, embeddings)
    assert mode.numel <= n * 2  # no (n, n) matrix
    with _LargestTensor() as mode:
        PerAnchorReducer(aggregation_func=_row_mean)(terms, embeddings)
    assert mode.numel == n * n  # a custom aggregation needs the dense matrix


def test_reducer_must_be_a_reducer() -> None:
    expected = "PerAnchorReducer: `reducer` must be a dmlkit reducer (e.g. MeanReducer()), got function."
    with pytest.raises(TypeError, match=re.escape(expected)):
        PerAnchorReducer(_row_mean)  # type: ignore[arg-type]


def test_aggregation_func_must_be_callable() -> None:
    expected = (
        "PerAnchorReducer: `aggregation_func` must be None or callable as aggregation_func(x, num_per_row), got 'mean'."
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        PerAnchorReducer(aggregation_func="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [TermKind.ELEMENT, TermKind.POS_PAIR, TermKind.NEG_PAIR])
@pytest.mark.parametrize("inner", ["MeanReducer", "SumReducer", "AvgNonZeroReducer"])
def test_pml_parity(kind: TermKind, inner: str) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    ours_inner = {"MeanReducer": MeanReducer, "SumReducer": SumReducer, "AvgNonZeroReducer": AvgNonZeroReducer}[inner]
    g = make_group(kind, 4)  # unique (anchor, other) pairs: PML's dense matrix keeps one value per pair
    ours = PerAnchorReducer(ours_inner())(g.terms, g.embeddings, g.labels)
    theirs = pml.PerAnchorReducer(getattr(pml, inner)())(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", [TermKind.POS_PAIR, TermKind.NEG_PAIR])
@pytest.mark.parametrize("aggregation_func", [_row_mean, _row_max])
def test_pml_parity_custom_aggregation(kind: TermKind, aggregation_func: Any) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 5)
    ours = PerAnchorReducer(aggregation_func=aggregation_func)(g.terms, g.embeddings, g.labels)
    theirs = pml.PerAnchorReducer(aggregation_func=aggregation_func)(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pml_parity_class_weighted_inner() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    weights = [0.5, 2.0, 3.5]
    g = make_group(TermKind.POS_PAIR, 6)
    ours = PerAnchorReducer(ClassWeightedReducer(weights))(g.terms, g.embeddings, g.labels)
    theirs = pml.PerAnchorReducer(pml.ClassWeightedReducer(torch.tensor(weights)))(
        g.pml_loss_dict(), g.embeddings, g.labels
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pml_rejects_triplets_which_are_supported_here() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(TermKind.TRIPLET, 7)
    with pytest.raises(NotImplementedError):
        pml.PerAnchorReducer()(g.pml_loss_dict(), g.embeddings, g.labels)
    got = PerAnchorReducer()(g.terms, g.embeddings, g.labels)
    assert got.item() == pytest.approx(mean(per_anchor_means(g.values, g.anchors, NUM_EMBEDDINGS)), rel=1e-12)


def test_all_kinds_covered() -> None:
    assert set(TUPLE_KINDS) | {TermKind.ELEMENT} == set(KINDS)
