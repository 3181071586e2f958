from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.reducers import ThresholdReducer
from dmlkit.regularizers import CenterInvariantRegularizer
from tests.reference.regularizers import center_invariant_values, mean


def _x(seed: int = 0, n: int = 6, d: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Rows of clearly different norms, as class centres of imbalanced classes would have.
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) * 3 + 0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale


def test_default_distance() -> None:
    d = CenterInvariantRegularizer().distance
    assert isinstance(d, LpDistance)
    assert (d.p, d.power, d.normalize_embeddings) == (2, 1, False)


def test_value_matches_oracle() -> None:
    x = _x()
    assert CenterInvariantRegularizer()(x).item() == pytest.approx(mean(center_invariant_values(x.tolist())), rel=1e-12)


def test_per_row_terms_match_oracle() -> None:
    x = _x(1)
    terms = CenterInvariantRegularizer().compute_terms(x)
    assert terms.values.tolist() == pytest.approx(center_invariant_values(x.tolist()), rel=1e-12)
    assert terms.anchors.tolist() == list(range(6))


def test_equal_norms_give_zero() -> None:
    x = torch.nn.functional.normalize(_x(2), dim=1) * 2.5
    assert CenterInvariantRegularizer()(x).item() == pytest.approx(0.0, abs=1e-12)


def test_l1_norm_distance_is_honoured() -> None:
    x = _x(3)
    reg = CenterInvariantRegularizer(distance=LpDistance(p=1, normalize_embeddings=False))
    assert reg(x).item() == pytest.approx(mean(center_invariant_values(x.tolist(), p=1)), rel=1e-12)


def test_gradcheck() -> None:
    x = _x(4, n=3, d=4).requires_grad_()
    assert torch.autograd.gradcheck(CenterInvariantRegularizer(), (x,))


@pytest.mark.parametrize("p", [2, 1])
def test_pml_parity(p: int) -> None:
    pml = pytest.importorskip("pytorch_metric_learning", reason="PML parity needs PML")
    from pytorch_metric_learning.distances import LpDistance as PMLLpDistance
    from pytorch_metric_learning.regularizers import CenterInvariantRegularizer as PMLCenterInvariant

    assert pml is not None
    x = _x(5, n=10, d=8)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    a = CenterInvariantRegularizer(distance=LpDistance(p=p, normalize_embeddings=False))(ours)
    b = PMLCenterInvariant(distance=PMLLpDistance(p=p, normalize_embeddings=False))(theirs)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


def test_custom_reducer_is_used() -> None:
    x = _x(6, n=8)
    values = center_invariant_values(x.tolist())
    ordered = sorted(values)
    threshold = (ordered[3] + ordered[4]) / 2  # between two values, so rounding cannot move one across
    got = CenterInvariantRegularizer(reducer=ThresholdReducer(low=threshold))(x)
    assert got.item() == pytest.approx(mean([v for v in values if v > threshold]), rel=1e-12)
    assert got.item() != pytest.approx(mean(values), rel=1e-6)


@pytest.mark.parametrize(
    ("distance", "shown"),
    [
        (LpDistance(), "LpDistance(normalize_embeddings=True, p=2, power=1)"),
        (LpDistance(normalize_embeddings=False, power=2), "LpDistance(normalize_embeddings=False, p=2, power=2)"),
        (CosineSimilarity(), "CosineSimilarity(normalize_embeddings=True, p=2, power=1)"),
    ],
)
def test_wrong_distance_is_rejected(distance: torch.nn.Module, shown: str) -> None:
    text = (
        "CenterInvariantRegularizer: `distance` must be an LpDistance(power=1, normalize_embeddings=False), "
        f"got {shown}."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        CenterInvariantRegularizer(distance=distance)  # type: ignore[arg-type]
