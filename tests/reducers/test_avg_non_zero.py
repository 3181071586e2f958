from __future__ import annotations

import pytest
import torch

from dmlkit.reducers import AvgNonZeroReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, make_group
from tests.reference.reducers import mean


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(kind: TermKind, seed: int) -> None:
    g = make_group(kind, seed)
    expected = mean([v for v in g.values if v > 0])
    assert AvgNonZeroReducer()(g.terms, g.embeddings, g.labels).item() == pytest.approx(expected, rel=1e-12)


def test_all_zero_is_graph_connected_zero() -> None:
    embeddings = torch.randn(3, 2, requires_grad=True)
    loss = AvgNonZeroReducer()(Terms(torch.zeros(3, requires_grad=True), torch.arange(3)), embeddings)
    assert loss.item() == 0.0 and loss.requires_grad


def test_negative_values_are_ignored() -> None:
    terms = Terms(torch.tensor([-3.0, 0.0, 1.0, 2.0]), torch.arange(4))
    assert AvgNonZeroReducer()(terms, torch.zeros(4, 2)).item() == 1.5


def test_low_is_zero() -> None:
    reducer = AvgNonZeroReducer()
    assert (reducer.low, reducer.high) == (0, None)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind: TermKind) -> None:
    g = make_group(kind, 2, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    fn = AvgNonZeroReducer()
    assert torch.autograd.gradcheck(lambda v: fn(Terms(v, g.terms.anchors, kind), g.embeddings), (values,))


@pytest.mark.parametrize("kind", KINDS)
def test_pml_parity(kind: TermKind) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 3)
    ours = AvgNonZeroReducer()(g.terms, g.embeddings, g.labels)
    theirs = pml.AvgNonZeroReducer()(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
