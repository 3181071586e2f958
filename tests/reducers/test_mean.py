from __future__ import annotations

import pytest
import torch

from dmlkit.reducers import MeanReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, make_group
from tests.reference.reducers import mean


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(kind: TermKind, seed: int) -> None:
    g = make_group(kind, seed)
    assert MeanReducer()(g.terms, g.embeddings, g.labels).item() == pytest.approx(mean(g.values), rel=1e-12)


def test_hand_computed() -> None:
    terms = Terms(torch.tensor([1.0, 0.0, 5.0, 2.0]), torch.tensor([0, 0, 1, 2]), TermKind.POS_PAIR)
    assert MeanReducer()(terms, torch.zeros(3, 2)).item() == 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind: TermKind) -> None:
    g = make_group(kind, 2, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: MeanReducer()(Terms(v, g.terms.anchors, kind), g.embeddings), (values,))


@pytest.mark.parametrize("kind", KINDS)
def test_pml_parity(kind: TermKind) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 3)
    ours = MeanReducer()(g.terms, g.embeddings, g.labels)
    theirs = pml.MeanReducer()(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
