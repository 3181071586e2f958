from __future__ import annotations

import re

import pytest
import torch

from dmlkit.reducers import ThresholdReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, make_group
from tests.reference.reducers import threshold_mean

BOUNDS = [(0.1, None), (None, 0.8), (0.3, 1.2), (0, None)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("low", "high"), BOUNDS)
def test_matches_oracle(kind: TermKind, low: float | None, high: float | None) -> None:
    g = make_group(kind, 0)
    got = ThresholdReducer(low=low, high=high)(g.terms, g.embeddings, g.labels)
    assert got.item() == pytest.approx(threshold_mean(g.values, low, high), rel=1e-12)


def test_bounds_are_strict() -> None:
    terms = Terms(torch.tensor([0.5, 1.0, 1.5, 2.0]), torch.arange(4))
    assert ThresholdReducer(low=0.5, high=2.0)(terms, torch.zeros(4, 2)).item() == 1.25
    assert ThresholdReducer(low=1.0)(terms, torch.zeros(4, 2)).item() == 1.75
    assert ThresholdReducer(high=1.0)(terms, torch.zeros(4, 2)).item() == 0.5


def test_nothing_inside_is_graph_connected_zero() -> None:
    embeddings = torch.randn(3, 2, requires_grad=True)
    terms = Terms(torch.tensor([0.1, 0.2, 5.0], requires_grad=True), torch.arange(3))
    loss = ThresholdReducer(low=0.5, high=1.0)(terms, embeddings)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert embeddings.grad is not None and not embeddings.grad.any()


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind: TermKind) -> None:
    g = make_group(kind, 2, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    assert (values - 0.2).abs().min() > 1e-3 and (values - 1.0).abs().min() > 1e-3  # away from the kinks
    reducer = ThresholdReducer(low=0.2, high=1.0)
    assert torch.autograd.gradcheck(lambda v: reducer(Terms(v, g.terms.anchors, kind), g.embeddings), (values,))


def test_at_least_one_bound() -> None:
    expected = "ThresholdReducer: `low` must be given when `high` is None (at least one bound is needed), got None."
    with pytest.raises(ValueError, match=re.escape(expected)):
        ThresholdReducer()


@pytest.mark.parametrize(("low", "high"), [(0.5, 0.5), (1, 0.2)])
def test_high_above_low(low: float, high: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"ThresholdReducer: `high` must be greater than `low` ({low}), got {high}.")
    ):
        ThresholdReducer(low=low, high=high)


def test_bounds_must_be_numbers() -> None:
    with pytest.raises(TypeError, match=re.escape("ThresholdReducer: `low` must be a number, got '0.1'.")):
        ThresholdReducer(low="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("ThresholdReducer: `high` must be a number, not NaN, got nan.")):
        ThresholdReducer(high=float("nan"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("low", "high"), BOUNDS)
def test_pml_parity(kind: TermKind, low: float | None, high: float | None) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 3)
    ours = ThresholdReducer(low=low, high=high)(g.terms, g.embeddings, g.labels)
    theirs = pml.ThresholdReducer(low=low, high=high)(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
