"""Behaviour every distance shares: input validation, the reference set, gradients, and the
distance/similarity semantics of gap, margin, smallest_dist and largest_dist."""

from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import (
    DISTANCES,
    BaseDistance,
    CosineSimilarity,
    DotProductSimilarity,
    LpDistance,
    SNRDistance,
)

ALL = [LpDistance, CosineSimilarity, DotProductSimilarity, SNRDistance]


def _x(seed: int, n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_registry_holds_every_distance() -> None:
    assert dict(DISTANCES) == {
        "lp": LpDistance,
        "cosine": CosineSimilarity,
        "dot_product": DotProductSimilarity,
        "snr": SNRDistance,
    }
    for cls in DISTANCES.values():
        assert issubclass(cls, BaseDistance)


@pytest.mark.parametrize("cls", ALL)
def test_query_must_be_2d(cls: type[BaseDistance]) -> None:
    name = cls.__name__
    expected = (
        f"{name}: `query_emb` must be a 2-D tensor of shape (batch_size, embedding_size), "
        "got tensor of shape (4,) and dtype torch.float32."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        cls()(torch.randn(4))


@pytest.mark.parametrize("cls", ALL)
def test_ref_must_be_2d(cls: type[BaseDistance]) -> None:
    name = cls.__name__
    expected = (
        f"{name}: `ref_emb` must be a 2-D tensor of shape (batch_size, embedding_size), "
        "got tensor of shape (2, 3, 4) and dtype torch.float32."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        cls()(torch.randn(3, 4), torch.randn(2, 3, 4))


@pytest.mark.parametrize("cls", ALL)
def test_non_float_rejected(cls: type[BaseDistance]) -> None:
    name = cls.__name__
    expected = (
        f"{name}: `query_emb` must be a floating-point tensor (call .float()), "
        "got tensor of shape (3, 4) and dtype torch.int64."
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        cls()(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=re.escape(expected.replace("query_emb", "ref_emb"))):
        cls()(torch.ones(2, 4), torch.ones(3, 4, dtype=torch.long))


@pytest.mark.parametrize("cls", ALL)
def test_non_tensor_rejected(cls: type[BaseDistance]) -> None:
    with pytest.raises(TypeError, match=re.escape(f"{cls.__name__}: `query_emb` must be a torch.Tensor, got list.")):
        cls()([[1.0, 2.0]])


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rejected(cls: type[BaseDistance], bad: float) -> None:
    x = torch.randn(3, 4)
    x[1, 2] = bad
    x[2, 0] = bad
    rule = (
        "must be finite (no NaN or Inf); check the model's outputs and learning rate, "
        "got 2 row(s) containing NaN or Inf."
    )
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: `query_emb` {rule}")):
        cls()(x)
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: `ref_emb` {rule}")):
        cls()(torch.randn(2, 4), x)


@pytest.mark.parametrize("cls", ALL)
def test_embedding_size_mismatch(cls: type[BaseDistance]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: `ref_emb` must be of embedding size 4, got 5.")):
        cls()(torch.randn(3, 4), torch.randn(2, 5))


@pytest.mark.parametrize("cls", [LpDistance, DotProductSimilarity, SNRDistance])  # CosineSimilarity: only p=2
@pytest.mark.parametrize("p", [0, -1.5])
def test_p_must_be_positive(cls: type[BaseDistance], p: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: `p` must be a number > 0, got {p}.")):
        cls(p=p)


@pytest.mark.parametrize("cls", [LpDistance, DotProductSimilarity, SNRDistance])
def test_p_and_power_must_be_numbers(cls: type[BaseDistance]) -> None:
    with pytest.raises(TypeError, match=re.escape(f"{cls.__name__}: `p` must be a number, got '2'.")):
        cls(p="2")
    with pytest.raises(TypeError, match=re.escape(f"{cls.__name__}: `power` must be a number, got None.")):
        cls(power=None)


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (LpDistance, {"is_inverted": True}, "LpDistance: `is_inverted` must be False (it is a distance), got True."),
        (SNRDistance, {"is_inverted": True}, "SNRDistance: `is_inverted` must be False (it is a distance), got True."),
        (
            DotProductSimilarity,
            {"is_inverted": False},
            "DotProductSimilarity: `is_inverted` must be True (it is a similarity), got False.",
        ),
        (
            CosineSimilarity,
            {"is_inverted": False},
            "CosineSimilarity: `is_inverted` must be True (it is a similarity), got False.",
        ),
    ],
)
def test_is_inverted_misuse(cls: type[BaseDistance], kwargs: dict[str, bool], expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        cls(**kwargs)


@pytest.mark.parametrize(("cls", "inverted"), [(LpDistance, False), (SNRDistance, False), (CosineSimilarity, True)])
def test_consistent_is_inverted_accepted(cls: type[BaseDistance], inverted: bool) -> None:
    d = cls(is_inverted=inverted)
    assert d.is_inverted is inverted
    assert d.higher_is_closer is inverted


@pytest.mark.parametrize("cls", ALL)
def test_ref_defaults_to_query(cls: type[BaseDistance]) -> None:
    x = _x(0)
    d = cls()
    assert torch.equal(d(x), d(x, x))


@pytest.mark.parametrize("cls", ALL)
def test_ref_shape(cls: type[BaseDistance]) -> None:
    mat = cls()(_x(0, n=3), _x(1, n=7))
    assert mat.shape == (3, 7)
    assert mat.dtype == torch.float64


@pytest.mark.parametrize("cls", ALL)
def test_empty_query(cls: type[BaseDistance]) -> None:
    mat = cls()(torch.zeros(0, 4), torch.randn(3, 4))
    assert mat.shape == (0, 3)


@pytest.mark.parametrize("cls", [CosineSimilarity, DotProductSimilarity, SNRDistance])
@pytest.mark.parametrize("with_ref", [False, True])
def test_gradcheck(cls: type[BaseDistance], with_ref: bool) -> None:
    q = _x(3, n=3).requires_grad_()
    if with_ref:
        r = _x(4, n=2).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: cls()(a, b), (q, r))
    else:
        assert torch.autograd.gradcheck(lambda a: cls()(a), (q,))


@pytest.mark.parametrize("cls", ALL)
def test_self_comparison_gradient_is_finite(cls: type[BaseDistance]) -> None:
    # The diagonal compares each row with itself (zero distance): backward must stay finite.
    x = _x(5).requires_grad_()
    cls()(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# --- distance vs similarity semantics --------------------------------------------------------------------


def test_gap_and_margin_for_a_distance() -> None:
    d = LpDistance()
    pos, neg = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
    assert d.gap(pos, neg).tolist() == [2.0, -2.0]  # positive: the positive is closer
    assert d.margin(neg, pos).tolist() == [2.0, -2.0]  # how much farther the first argument is
    assert not d.higher_is_closer


def test_gap_and_margin_for_a_similarity() -> None:
    d = CosineSimilarity()
    pos, neg = torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.5])
    assert d.gap(pos, neg).tolist() == pytest.approx([0.7, -0.4])
    assert d.margin(neg, pos).tolist() == pytest.approx([0.7, -0.4])
    assert d.higher_is_closer


def test_smallest_and_largest_dist() -> None:
    mat = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.8, 0.2]], dtype=torch.float64)
    dist, sim = LpDistance(), DotProductSimilarity()
    assert dist.smallest_dist(mat).item() == pytest.approx(0.1)
    assert dist.largest_dist(mat).item() == pytest.approx(0.9)
    assert sim.smallest_dist(mat).item() == pytest.approx(0.9)
    assert sim.largest_dist(mat).item() == pytest.approx(0.1)
    assert dist.smallest_dist(mat, dim=1).indices.tolist() == [1, 2]
    assert sim.smallest_dist(mat, dim=1).indices.tolist() == [2, 1]
    assert dist.largest_dist(mat, dim=1).indices.tolist() == [2, 1]
    assert sim.largest_dist(mat, dim=1).indices.tolist() == [1, 2]
    assert dist.smallest_dist(mat, torch.full_like(mat, 0.4)).tolist() == [[0.4, 0.1, 0.4], [0.3, 0.4, 0.2]]
    assert sim.smallest_dist(mat, torch.full_like(mat, 0.4)).tolist() == [[0.5, 0.4, 0.9], [0.4, 0.8, 0.4]]


def test_distance_and_similarity_agree_on_the_sphere() -> None:
    # On the unit sphere ||a - b||^2 = 2 - 2 cos(a, b): the same neighbours and the same gap signs.
    x = _x(6, n=8, d=5)
    lp, cos = LpDistance(), CosineSimilarity()
    dmat, smat = lp(x), cos(x)
    dmat_offdiag = dmat + torch.eye(8, dtype=x.dtype) * 10
    smat_offdiag = smat - torch.eye(8, dtype=x.dtype) * 10
    assert torch.equal(lp.smallest_dist(dmat_offdiag, dim=1).indices, cos.smallest_dist(smat_offdiag, dim=1).indices)
    assert torch.equal(lp.largest_dist(dmat, dim=1).indices, cos.largest_dist(smat, dim=1).indices)
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([7, 6, 5, 4])
    assert torch.equal(lp.gap(dmat[a, p], dmat[a, n]) > 0, cos.gap(smat[a, p], smat[a, n]) > 0)
    assert torch.equal(lp.margin(dmat[a, n], dmat[a, p]) > 0, cos.margin(smat[a, n], smat[a, p]) > 0)


@pytest.mark.parametrize("name", ["LpDistance", "CosineSimilarity", "DotProductSimilarity", "SNRDistance"])
def test_semantics_match_pml(name: str) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    ours, theirs = getattr(__import__("dmlkit.distances", fromlist=[name]), name)(), getattr(pml, name)()
    x, y = _x(7, n=6), _x(8, n=6)
    assert ours.is_inverted == theirs.is_inverted
    assert torch.equal(ours.margin(x, y), theirs.margin(x, y))
    assert torch.equal(ours.smallest_dist(x, dim=1).values, theirs.smallest_dist(x, dim=1).values)
    assert torch.equal(ours.largest_dist(x, dim=0).indices, theirs.largest_dist(x, dim=0).indices)
    assert torch.allclose(ours.normalize(x), theirs.normalize(x), atol=1e-12)
    assert torch.allclose(ours.get_norm(x), theirs.get_norm(x), atol=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_normalize_equals_torch_normalize_with_zero_rows_in_value_and_gradient(p: int) -> None:
    from dmlkit.distances import LpDistance

    g = torch.Generator().manual_seed(p)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x[2] = 0  # a zero row: divided by eps, as torch.nn.functional.normalize does
    weights = torch.randn(6, 4, generator=g, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = LpDistance(p=p).normalize(ours)
    assert torch.allclose(out, torch.nn.functional.normalize(theirs, p=p, dim=1))
    (out * weights).sum().backward()
    (torch.nn.functional.normalize(theirs, p=p, dim=1) * weights).sum().backward()
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1])
def test_l2_normalize_equals_torch_in_value_and_gradient(dim: int) -> None:
    """The written-out backward against autograd of ``F.normalize``, with a zero row and a row below eps."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    if dim == 1:
        x[2] = 0.0
        x[3] *= 1e-14
    else:
        x[:, 1] = 0.0
    grad = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    results = []
    for normalize in (CosineSimilarity().normalize, torch.nn.functional.normalize):
        leaf = x.clone().requires_grad_(True)
        out = normalize(leaf, dim=dim)
        (leaf_grad,) = torch.autograd.grad(out, leaf, grad)
        results.append((out.detach(), leaf_grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)


def test_l2_normalize_has_first_and_second_derivatives() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    normalize = CosineSimilarity().normalize
    assert torch.autograd.gradcheck(normalize, (x,))
    assert torch.autograd.gradgradcheck(normalize, (x,))
