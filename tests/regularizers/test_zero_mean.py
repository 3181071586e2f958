from __future__ import annotations

import pytest
import torch

from dmlkit.reducers import ThresholdReducer
from dmlkit.regularizers import ZeroMeanRegularizer
from tests.reference.regularizers import mean, zero_mean_values


def _x(seed: int = 0, n: int = 6, d: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_value_matches_oracle() -> None:
    x = _x()
    assert ZeroMeanRegularizer()(x).item() == pytest.approx(mean(zero_mean_values(x.tolist())), rel=1e-12)


def test_per_row_terms_match_oracle() -> None:
    x = _x(1)
    terms = ZeroMeanRegularizer().compute_terms(x)
    assert terms.values.tolist() == pytest.approx(zero_mean_values(x.tolist()), rel=1e-12)
    assert terms.anchors.tolist() == list(range(6))


def test_zero_mean_rows_give_zero() -> None:
    x = _x(2)
    x = x - x.mean(dim=1, keepdim=True)
    assert ZeroMeanRegularizer()(x).item() == pytest.approx(0.0, abs=1e-12)


def test_gradcheck() -> None:
    x = _x(3, n=3, d=4).requires_grad_()
    assert torch.autograd.gradcheck(ZeroMeanRegularizer(), (x,))


def test_gradient_is_sign_of_row_sum_over_n() -> None:
    x = _x(4).requires_grad_()
    ZeroMeanRegularizer()(x).backward()
    expected = torch.sign(x.detach().sum(dim=1, keepdim=True)).expand_as(x) / x.shape[0]
    torch.testing.assert_close(x.grad, expected, atol=1e-12, rtol=0)


def test_pml_parity() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.regularizers", reason="PML parity needs PML")
    x = _x(5, n=12, d=7)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    a = ZeroMeanRegularizer()(ours)
    b = pml.ZeroMeanRegularizer()(theirs)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


def test_custom_reducer_is_used() -> None:
    x = _x(6, n=8)
    values = zero_mean_values(x.tolist())
    ordered = sorted(values)
    threshold = (ordered[3] + ordered[4]) / 2  # between two values, so rounding cannot move one across
    got = ZeroMeanRegularizer(reducer=ThresholdReducer(low=threshold))(x)
    assert got.item() == pytest.approx(mean([v for v in values if v > threshold]), rel=1e-12)
    assert got.item() != pytest.approx(mean(values), rel=1e-6)
