from __future__ import annotations

import math
import re

import pytest
import torch

from dmlkit.distances import LpDistance
from tests.reference.distances import lp_matrix, norm

GRID = [(p, power, normalize) for p in (1, 2, 3) for power in (1, 2) for normalize in (True, False)]


def _x(seed: int, n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _as_tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(("p", "power", "normalize"), GRID)
def test_matrix_matches_oracle_with_ref(p: int, power: int, normalize: bool) -> None:
    q, r = _x(0), _x(1, n=3)
    got = LpDistance(p=p, power=power, normalize_embeddings=normalize)(q, r)
    expected = _as_tensor(lp_matrix(q.tolist(), r.tolist(), p, power, normalize))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("p", "power", "normalize"), GRID)
def test_matrix_matches_oracle_without_ref(p: int, power: int, normalize: bool) -> None:
    q = _x(2)
    got = LpDistance(p=p, power=power, normalize_embeddings=normalize)(q)
    expected = _as_tensor(lp_matrix(q.tolist(), q.tolist(), p, power, normalize))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.diagonal().abs().max().item() < 1e-12


def test_infinity_norm() -> None:
    q, r = _x(3), _x(4)
    got = LpDistance(p=math.inf, normalize_embeddings=False)(q, r)
    torch.testing.assert_close(got, _as_tensor(lp_matrix(q.tolist(), r.tolist(), math.inf, 1, False)))


def test_default_is_normalized_euclidean() -> None:
    d = LpDistance()
    assert (d.p, d.power, d.normalize_embeddings, d.is_inverted) == (2, 1, True, False)
    q = torch.tensor([[3.0, 4.0]])
    r = torch.tensor([[0.0, -2.0]])
    # (0.6, 0.8) against (0, -1).
    assert d(q, r).item() == pytest.approx(math.sqrt(0.36 + 3.24))


@pytest.mark.parametrize(("p", "normalize"), [(1, False), (2, True), (3, False)])
def test_pairwise_distance_matches_oracle(p: int, normalize: bool) -> None:
    q, r = _x(5), _x(6)
    d = LpDistance(p=p, normalize_embeddings=normalize)
    got = d.pairwise_distance(q, r)
    expected = []
    for qi, ri in zip(q.tolist(), r.tolist(), strict=True):
        expected.append(norm([a - b for a, b in zip(qi, ri, strict=True)], p))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # Row i of the pairwise distances is the diagonal of the matrix (no normalisation, no power).
    assert torch.allclose(got, LpDistance(p=p, normalize_embeddings=False)(q, r).diagonal(), atol=1e-12)


@pytest.mark.parametrize(("p", "power", "normalize"), GRID)
def test_gradcheck(p: int, power: int, normalize: bool) -> None:
    # Distinct query and reference rows: the L_p norm is not differentiable at zero distance.
    q = _x(7, n=3).requires_grad_()
    r = _x(8, n=2).requires_grad_()
    distance = LpDistance(p=p, power=power, normalize_embeddings=normalize)
    assert torch.autograd.gradcheck(lambda a, b: distance(a, b), (q, r))


@pytest.mark.parametrize("p", [0, -2])
def test_invalid_p(p: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"LpDistance: `p` must be a number > 0, got {p}.")):
        LpDistance(p=p)


def test_is_inverted_rejected() -> None:
    expected = "LpDistance: `is_inverted` must be False (it is a distance), got True."
    with pytest.raises(ValueError, match=re.escape(expected)):
        LpDistance(is_inverted=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype: torch.dtype) -> None:
    q, r = _x(9).float(), _x(10).float()
    got = LpDistance()(q.to(dtype), r.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), LpDistance()(q, r), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("p", "power", "normalize"), [*GRID, (math.inf, 1, False)])
@pytest.mark.parametrize("with_ref", [False, True])
def test_pml_parity(p: float, power: int, normalize: bool, with_ref: bool) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(11, n=6), _x(12, n=4)
    args = (q, r) if with_ref else (q,)
    ours = LpDistance(p=p, power=power, normalize_embeddings=normalize)(*args)
    theirs = pml.LpDistance(p=p, power=power, normalize_embeddings=normalize)(*args)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pairwise_distance_pml_parity() -> None:
    # pytorch-metric-learning adds 1e-6 to every coordinate difference (torch's pairwise_distance eps);
    # the exact norm is used here, so the two agree to within that offset.
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(13), _x(14)
    torch.testing.assert_close(
        LpDistance().pairwise_distance(q, r), pml.LpDistance().pairwise_distance(q, r), rtol=0, atol=1e-5
    )


def test_euclidean_gradient_matches_cdist_including_repeated_rows() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    x[4] = x[1]  # a zero distance: cdist's gradient there is 0, never NaN
    y = torch.cat([x[:3], torch.randn(4, 5, generator=g, dtype=torch.float64)])
    weights = {None: torch.randn(9, 9, generator=g, dtype=torch.float64)}
    weights["ref"] = torch.randn(9, 7, generator=g, dtype=torch.float64)
    for ref in (None, y):
        ours = x.clone().requires_grad_(True)
        theirs = x.clone().requires_grad_(True)
        ours_ref = ours if ref is None else ref.clone().requires_grad_(True)
        theirs_ref = theirs if ref is None else ref.clone().requires_grad_(True)
        w = weights[None] if ref is None else weights["ref"]
        (LpDistance(normalize_embeddings=False)(ours, None if ref is None else ours_ref) * w).sum().backward()
        (torch.cdist(theirs, theirs_ref) * w).sum().backward()
        assert torch.isfinite(ours.grad).all()
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-12)
        if ref is not None:
            assert torch.allclose(ours_ref.grad, theirs_ref.grad, atol=1e-12)


def test_euclidean_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: LpDistance()(a, b), (x, y))


def test_squared_euclidean_matches_cdist_squared_in_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    x[3] = x[0]
    weights = torch.randn(8, 8, generator=g, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    mat = LpDistance(normalize_embeddings=False, power=2)(ours)
    assert torch.allclose(mat, torch.cdist(theirs, theirs) ** 2)
    (mat * weights).sum().backward()
    (torch.cdist(theirs, theirs) ** 2 * weights).sum().backward()
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-12)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: LpDistance(power=2)(a, b), (x.clone().requires_grad_(True), y))
