from __future__ import annotations

import re

import pytest
import torch

from dmlkit.reducers import DivisorReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, make_group
from tests.reference.reducers import divide


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("divisor", [1.0, 4.0, 0.5])
def test_matches_oracle(kind: TermKind, divisor: float) -> None:
    g = make_group(kind, 0, divisor=divisor)
    got = DivisorReducer()(g.terms, g.embeddings, g.labels)
    assert got.item() == pytest.approx(divide(g.values, divisor), rel=1e-12)


def test_tensor_divisor() -> None:
    terms = Terms(torch.tensor([1.0, 2.0, 3.0]), torch.arange(3), divisor=torch.tensor(4.0))
    assert DivisorReducer()(terms, torch.zeros(3, 2)).item() == 1.5


def test_zero_divisor_is_graph_connected_zero() -> None:
    embeddings = torch.randn(3, 2, requires_grad=True)
    loss = DivisorReducer()(Terms(torch.ones(3), torch.arange(3), divisor=0), embeddings)
    assert loss.item() == 0.0 and loss.requires_grad


def test_divisor_required() -> None:
    expected = "DivisorReducer: `divisor` must be set by the loss for this group of terms, got None."
    with pytest.raises(ValueError, match=re.escape(expected)):
        DivisorReducer()(Terms(torch.ones(3), torch.arange(3)), torch.zeros(3, 2))


def test_half_precision_overflow_recovers() -> None:
    # Each value fits in float16 but their sum does not; the reduction must not return inf.
    values = torch.full((4,), 60000.0, dtype=torch.float16)
    out = DivisorReducer()(Terms(values, torch.arange(4), divisor=4), torch.zeros(4, 2, dtype=torch.float16))
    assert out.dtype == torch.float16 and out.item() == pytest.approx(60000.0, rel=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind: TermKind) -> None:
    g = make_group(kind, 2, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    fn = DivisorReducer()
    assert torch.autograd.gradcheck(lambda v: fn(Terms(v, g.terms.anchors, kind, divisor=3.0), g.embeddings), (values,))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("divisor", [3.0, 0])
def test_pml_parity(kind: TermKind, divisor: float) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 3, divisor=divisor)
    ours = DivisorReducer()(g.terms, g.embeddings, g.labels)
    theirs = pml.DivisorReducer()(g.pml_loss_dict(divisor=divisor), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
