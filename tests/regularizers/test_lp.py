from __future__ import annotations

import math
import re

import pytest
import torch

from dmlkit.reducers import ThresholdReducer
from dmlkit.regularizers import LpRegularizer
from tests.reference.regularizers import lp_values, mean


def _x(seed: int = 0, n: int = 6, d: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("p", "power"), [(2, 1), (2, 2), (1, 2), (3, 0.5), (math.inf, 1), (1.5, 3)])
def test_value_matches_oracle(p: float, power: float) -> None:
    x = _x()
    expected = mean(lp_values(x.tolist(), p, power))
    assert LpRegularizer(p=p, power=power)(x).item() == pytest.approx(expected, rel=1e-12)


def test_per_row_terms_match_oracle() -> None:
    x = _x(1)
    terms = LpRegularizer(p=3, power=2).compute_terms(x)
    assert terms.values.tolist() == pytest.approx(lp_values(x.tolist(), 3, 2), rel=1e-12)
    assert terms.anchors.tolist() == list(range(6))


@pytest.mark.parametrize(("p", "power"), [(2, 1), (3, 2), (1, 1)])
def test_gradcheck(p: float, power: float) -> None:
    x = _x(2, n=3, d=4).requires_grad_()
    assert torch.autograd.gradcheck(LpRegularizer(p=p, power=power), (x,))


@pytest.mark.parametrize(("p", "power"), [(2, 1), (2, 2), (1, 3), (4, 0.5)])
def test_pml_parity(p: float, power: float) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.regularizers", reason="PML parity needs PML")
    x = _x(3, n=10, d=8)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    a = LpRegularizer(p=p, power=power)(ours)
    b = pml.LpRegularizer(p=p, power=power)(theirs)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


def test_custom_reducer_is_used() -> None:
    x = _x(4, n=8)
    values = lp_values(x.tolist())
    ordered = sorted(values)
    threshold = (ordered[4] + ordered[5]) / 2  # between two values, so rounding cannot move one across
    kept = [v for v in values if v > threshold]
    got = LpRegularizer(reducer=ThresholdReducer(low=threshold))(x)
    assert got.item() == pytest.approx(mean(kept), rel=1e-12)
    assert got.item() != pytest.approx(mean(values), rel=1e-6)


def test_empty_batch_is_zero_with_gradient() -> None:
    x = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    out = LpRegularizer()(x)
    out.backward()
    assert out.item() == 0.0
    assert x.grad is not None and x.grad.shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"p": 0}, ValueError, "LpRegularizer: `p` must be a number > 0, got 0."),
        ({"p": -1.5}, ValueError, "LpRegularizer: `p` must be a number > 0, got -1.5."),
        ({"p": "2"}, TypeError, "LpRegularizer: `p` must be a number, got '2'."),
        ({"power": float("nan")}, ValueError, "LpRegularizer: `power` must be a number, not NaN, got nan."),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(text)}$"):
        LpRegularizer(**kwargs)  # type: ignore[arg-type]


def test_input_must_be_a_matrix() -> None:
    text = (
        "LpRegularizer: `x` must be a 2-D tensor of shape (batch_size, embedding_size), "
        "got tensor of shape (4,) and dtype torch.float32."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        LpRegularizer()(torch.ones(4))
