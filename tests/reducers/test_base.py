"""Behaviour every reducer shares: empty groups, already-reduced scalars, named groups, the registry."""

from __future__ import annotations

import pytest
import torch

from dmlkit.reducers import (
    REDUCERS,
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
from tests.reducers.groups import KINDS, NUM_CLASSES, make_group


def _instances() -> dict[str, BaseReducer]:
    return {
        "mean": MeanReducer(),
        "sum": SumReducer(),
        "avg_non_zero": AvgNonZeroReducer(),
        "threshold": ThresholdReducer(low=0.1, high=2.0),
        "divisor": DivisorReducer(),
        "class_weighted": ClassWeightedReducer([0.5, 1.0, 2.0]),
        "per_anchor": PerAnchorReducer(),
        "multiple": MultipleReducers({"other": SumReducer()}),
        "do_nothing": DoNothingReducer(),
    }


SCALAR = [name for name in _instances() if name != "do_nothing"]


def test_registry_covers_every_reducer() -> None:
    assert set(REDUCERS) == set(_instances())
    for name, reducer in _instances().items():
        assert type(reducer) is REDUCERS[name]
        assert isinstance(reducer, BaseReducer)


def test_registry_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="Did you mean 'per_anchor'"):
        REDUCERS["per_ancor"]


@pytest.mark.parametrize("name", SCALAR)
@pytest.mark.parametrize("kind", KINDS)
def test_empty_group_is_graph_connected_zero(name: str, kind: TermKind) -> None:
    reducer = _instances()[name]
    embeddings = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    empty = Terms(embeddings.new_zeros(0), torch.zeros(0, dtype=torch.long), kind)
    for call in (empty, {"loss": empty}, {"pos_loss": empty, "neg_loss": empty}):
        loss = reducer(call, embeddings, torch.zeros(5, dtype=torch.long))
        assert loss.ndim == 0 and loss.item() == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, embeddings)
        assert torch.equal(grad, torch.zeros_like(embeddings))


@pytest.mark.parametrize("name", SCALAR)
def test_no_groups_is_graph_connected_zero(name: str) -> None:
    embeddings = torch.randn(5, 3, requires_grad=True)
    loss = _instances()[name]({}, embeddings, torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("name", SCALAR)
def test_already_reduced_passes_through(name: str) -> None:
    reducer = _instances()[name]
    value = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    embeddings = torch.randn(4, 3, dtype=torch.float64)
    out = reducer(Terms.reduced(value * 2), embeddings, torch.zeros(4, dtype=torch.long))
    assert out.item() == 5.0
    (grad,) = torch.autograd.grad(out, value)
    assert grad.item() == 2.0
    assert reducer({"embedding_reg_loss": Terms.reduced(value)}, embeddings).item() == 2.5


@pytest.mark.parametrize("name", SCALAR)
def test_named_groups_are_summed(name: str) -> None:
    reducer = _instances()[name]
    first = make_group(TermKind.POS_PAIR, seed=1, divisor=5.0)
    second = make_group(TermKind.NEG_PAIR, seed=2, divisor=3.0)
    emb, labels = first.embeddings, first.labels
    reg = Terms.reduced(torch.tensor(0.25, dtype=torch.float64))
    together = reducer({"pos_loss": first.terms, "neg_loss": second.terms, "embedding_reg_loss": reg}, emb, labels)
    separate = [
        reducer({key: terms}, emb, labels) for key, terms in (("pos_loss", first.terms), ("neg_loss", second.terms))
    ]
    assert together.item() == pytest.approx(sum(s.item() for s in separate) + 0.25, rel=1e-12)


@pytest.mark.parametrize("name", SCALAR)
def test_result_is_a_differentiable_scalar(name: str) -> None:
    group = make_group(TermKind.TRIPLET, seed=3, hinge=False, divisor=4.0)
    out = _instances()[name](group.terms, group.embeddings, group.labels)
    assert out.ndim == 0 and out.dtype == torch.float64
    (grad,) = torch.autograd.grad(out, group.terms.values)
    assert bool(torch.isfinite(grad).all())


def test_labels_in_range_of_weights() -> None:
    # The shared groups draw labels below NUM_CLASSES, the length of the weights above.
    assert len(_instances()["class_weighted"].weights) == NUM_CLASSES


@pytest.mark.parametrize("name", SCALAR)
def test_reducers_are_modules_that_move(name: str) -> None:
    reducer = _instances()[name].double()
    assert isinstance(reducer, torch.nn.Module)
    group = make_group(TermKind.ELEMENT, seed=4, divisor=2.0)
    assert reducer(group.terms, group.embeddings, group.labels).dtype == torch.float64
