from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.reducers import DivisorReducer, MeanReducer
from dmlkit.regularizers import SparseCentersRegularizer
from tests.reference.regularizers import mean, sparse_centers_pairs, sparse_centers_values

SHAPES = [(1, 2), (3, 2), (2, 4), (4, 3)]


def _x(seed: int, num_classes: int, centers_per_class: int, d: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_classes * centers_per_class, d, generator=g, dtype=torch.float64)


def test_defaults() -> None:
    reg = SparseCentersRegularizer(num_classes=3, centers_per_class=2)
    assert isinstance(reg.distance, CosineSimilarity)
    assert isinstance(reg.reducer, DivisorReducer)
    assert (reg.num_classes, reg.centers_per_class) == (3, 2)


@pytest.mark.parametrize(("num_classes", "centers_per_class"), SHAPES)
def test_value_matches_oracle(num_classes: int, centers_per_class: int) -> None:
    x = _x(0, num_classes, centers_per_class)
    values, divisor = sparse_centers_values(x.tolist(), num_classes, centers_per_class)
    got = SparseCentersRegularizer(num_classes, centers_per_class)(x)
    assert got.item() == pytest.approx(sum(values) / divisor, rel=1e-12)


@pytest.mark.parametrize(("num_classes", "centers_per_class"), SHAPES)
def test_terms_are_the_same_class_pairs(num_classes: int, centers_per_class: int) -> None:
    x = _x(1, num_classes, centers_per_class)
    values, divisor = sparse_centers_values(x.tolist(), num_classes, centers_per_class)
    terms = SparseCentersRegularizer(num_classes, centers_per_class).compute_terms(x)
    assert terms.values.tolist() == pytest.approx(values, rel=1e-12)
    assert terms.anchors.tolist() == [t for t, _ in sparse_centers_pairs(num_classes, centers_per_class)]
    assert terms.divisor == divisor == 2 * len(values)


def test_gradcheck() -> None:
    x = _x(2, 2, 3, d=4).requires_grad_()
    assert torch.autograd.gradcheck(SparseCentersRegularizer(2, 3), (x,))


@pytest.mark.parametrize(("num_classes", "centers_per_class", "power"), [*[(*s, 1) for s in SHAPES], (3, 3, 2)])
def test_pml_parity(num_classes: int, centers_per_class: int, power: int) -> None:
    pytest.importorskip("pytorch_metric_learning", reason="PML parity needs PML")
    from pytorch_metric_learning.distances import CosineSimilarity as PMLCosine
    from pytorch_metric_learning.regularizers import SparseCentersRegularizer as PMLSparseCenters

    x = _x(3, num_classes, centers_per_class, d=8)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    a = SparseCentersRegularizer(num_classes, centers_per_class, distance=CosineSimilarity(power=power))(ours)
    b = PMLSparseCenters(num_classes, centers_per_class, distance=PMLCosine(power=power))(theirs)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


def test_identical_centres_give_zero_and_a_finite_gradient() -> None:
    x = _x(4, 2, 2)
    x[1] = x[0] * 3  # same direction, so cosine 1 (up to rounding)
    x = x.requires_grad_()
    terms = SparseCentersRegularizer(2, 2).compute_terms(x)
    assert terms.values[0].item() == pytest.approx(0.0, abs=1e-7)
    SparseCentersRegularizer(2, 2)(x).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(x.grad[:2], torch.zeros_like(x.grad[:2]), atol=1e-6, rtol=0)


def test_custom_reducer_is_used() -> None:
    x = _x(5, 3, 3)
    values, divisor = sparse_centers_values(x.tolist(), 3, 3)
    got = SparseCentersRegularizer(3, 3, reducer=MeanReducer())(x)
    assert got.item() == pytest.approx(mean(values), rel=1e-12)
    assert got.item() != pytest.approx(sum(values) / divisor, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        (
            {"num_classes": 3, "centers_per_class": 1},
            ValueError,
            "SparseCentersRegularizer: `centers_per_class` must be an integer > 1, got 1.",
        ),
        (
            {"num_classes": 0, "centers_per_class": 2},
            ValueError,
            "SparseCentersRegularizer: `num_classes` must be an integer >= 1, got 0.",
        ),
        (
            {"num_classes": 3, "centers_per_class": 2.0},
            TypeError,
            "SparseCentersRegularizer: `centers_per_class` must be an integer, got 2.0.",
        ),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(text)}$"):
        SparseCentersRegularizer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("distance", "shown"),
    [
        (LpDistance(), "LpDistance(normalize_embeddings=True, p=2, power=1)"),
        (DotProductSimilarity(), "DotProductSimilarity(normalize_embeddings=True, p=2, power=1)"),
    ],
)
def test_distance_must_be_cosine(distance: BaseDistance, shown: str) -> None:
    text = f"SparseCentersRegularizer: `distance` must be a CosineSimilarity, got {shown}."
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        SparseCentersRegularizer(3, 2, distance=distance)


def test_input_must_have_one_row_per_centre() -> None:
    text = "SparseCentersRegularizer: `x` must be of shape (num_classes * centers_per_class, D) = (6, D), got (5, 4)."
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        SparseCentersRegularizer(3, 2)(torch.randn(5, 4))
