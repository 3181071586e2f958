"""BarlowTwinsLoss against the float64 oracle in tests/reference/barlow_twins.py, autograd, invariants, errors.

pytorch-metric-learning has no Barlow Twins loss, so there is no parity test.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity
from dmlkit.losses import LOSSES, BarlowTwinsLoss
from dmlkit.reducers import MeanReducer, MultipleReducers, SumReducer
from dmlkit.regularizers import LpRegularizer
from tests.reference import barlow_twins as ref

PARAMS = [
    {},
    {"lambd": 0.1, "eps": 0.0},
    {"lambd": 1.0, "eps": 1e-2, "scale_loss": 1 / 32},
    {"lambd": 0.0},
]


def _views(seed: int, n: int = 8, d: int = 5, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.5 * scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


def _oracle_total(z1: Tensor, z2: Tensor, **params: float) -> float:
    on, off = ref.barlow_twins_loss(z1, z2, **params)
    return on + off


# --------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_matches_oracle(params: dict, scale: float) -> None:
    loss_fn = BarlowTwinsLoss(**params)
    for seed in range(3):
        z1, z2 = _views(seed, scale=scale)
        assert loss_fn(z1, ref_emb=z2).item() == pytest.approx(_oracle_total(z1, z2, **params), rel=1e-10)


def test_hand_computed() -> None:
    # columns (1, 2, 3, 4) and (2, 1, 5, 3): centred (-1.5, -0.5, 0.5, 1.5) and (-0.75, -1.75, 2.25, 0.25);
    # covariance 3.5 / 4, variances 5 / 4 and 8.75 / 4, so their correlation is 3.5 / sqrt(5 * 8.75).
    z = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [4.0, 3.0]], dtype=torch.float64)
    rho = 3.5 / math.sqrt(5 * 8.75)
    # identical views: C = [[1, rho], [rho, 1]], so only the two off-diagonal terms count
    expected = 5e-3 * 2 * rho**2
    assert _oracle_total(z, z, eps=0.0) == pytest.approx(expected, rel=1e-12)
    assert BarlowTwinsLoss(eps=0.0)(z, ref_emb=z).item() == pytest.approx(expected, rel=1e-12)
    # swapping the columns of the second view: C = [[rho, 1], [1, rho]]
    swapped = z.flip(1)
    expected = 2 * (1 - rho) ** 2 + 5e-3 * 2
    assert BarlowTwinsLoss(eps=0.0)(z, ref_emb=swapped).item() == pytest.approx(expected, rel=1e-12)


def test_decorrelated_identical_views_give_zero() -> None:
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert BarlowTwinsLoss(eps=0.0)(z, ref_emb=z * 3 + 7).item() == pytest.approx(0.0, abs=1e-15)


def test_sub_losses_keep_their_names() -> None:
    z1, z2 = _views(1)
    on, off = ref.barlow_twins_loss(z1, z2)
    d = z1.shape[1]
    # mean over dimensions of the invariance terms only, sum of the redundancy terms
    reducer = MultipleReducers({"invariance_loss": MeanReducer(), "redundancy_reduction_loss": SumReducer()})
    assert BarlowTwinsLoss(reducer=reducer)(z1, ref_emb=z2).item() == pytest.approx(on / d + off, rel=1e-10)
    assert BarlowTwinsLoss(reducer=MeanReducer())(z1, ref_emb=z2).item() == pytest.approx((on + off) / d, rel=1e-10)


def test_cross_correlation_matches_oracle() -> None:
    z1, z2 = _views(2, n=6, d=4)
    got = BarlowTwinsLoss().cross_correlation(z1, z2)
    torch.testing.assert_close(
        got, torch.tensor(ref.cross_correlation(z1, z2), dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_symmetric_in_the_two_views() -> None:
    z1, z2 = _views(3)
    loss_fn = BarlowTwinsLoss(lambd=0.3)
    assert loss_fn(z1, ref_emb=z2).item() == pytest.approx(loss_fn(z2, ref_emb=z1).item(), rel=1e-12)


def test_invariant_to_per_dimension_affine_maps() -> None:
    z1, z2 = _views(4)
    scale = torch.tensor([0.5, 2.0, 10.0, 1.0, 3.0], dtype=torch.float64)
    loss_fn = BarlowTwinsLoss(eps=0.0)
    moved = loss_fn(z1 * scale - 4, ref_emb=z2 / scale + 1).item()
    assert moved == pytest.approx(loss_fn(z1, ref_emb=z2).item(), rel=1e-10)


def test_embedding_regularizer_is_added() -> None:
    z1, z2 = _views(5)
    plain = BarlowTwinsLoss()(z1, ref_emb=z2).item()
    penalty = LpRegularizer()(z1).item()
    got = BarlowTwinsLoss(embedding_regularizer=LpRegularizer(), embedding_reg_weight=0.5)(z1, ref_emb=z2).item()
    assert got == pytest.approx(plain + 0.5 * penalty, rel=1e-12)


def test_registered() -> None:
    assert LOSSES["barlow_twins"] is BarlowTwinsLoss


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("params", PARAMS[:3])
def test_gradcheck(params: dict) -> None:
    z1, z2 = _views(6, n=5, d=3)
    loss_fn = BarlowTwinsLoss(**params)
    assert torch.autograd.gradcheck(lambda x, y: loss_fn(x, ref_emb=y), (z1.requires_grad_(), z2.requires_grad_()))


def test_collapsed_views_have_finite_gradients() -> None:
    # every sample the same: variance 0 in every dimension; eps keeps the division finite and C = 0
    z = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    loss = BarlowTwinsLoss()(z, ref_emb=w)
    loss.backward()
    assert loss.item() == pytest.approx(4.0, rel=1e-12)
    assert bool(torch.isfinite(z.grad).all()) and bool(torch.isfinite(w.grad).all())


@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_extreme_scales_stay_finite(scale: float) -> None:
    z1, z2 = _views(7, scale=scale)
    x, y = z1.float().requires_grad_(), z2.float().requires_grad_()
    loss = BarlowTwinsLoss()(x, ref_emb=y)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())


def test_training_decorrelates_and_aligns() -> None:
    # two noisy views of 4-D data through a shared linear map: minimising the loss drives C towards I
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    v1 = x + 0.05 * torch.randn(256, 4, generator=g, dtype=torch.float64)
    v2 = x + 0.05 * torch.randn(256, 4, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.eye(4, dtype=torch.float64))
    loss_fn = BarlowTwinsLoss(lambd=0.1)
    before = loss_fn(v1 @ w, ref_emb=v2 @ w).item()
    optimizer = torch.optim.Adam([w], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss_fn(v1 @ w, ref_emb=v2 @ w).backward()
        optimizer.step()
    after = loss_fn(v1 @ w, ref_emb=v2 @ w).item()
    assert after < 0.05 < before
    c = loss_fn.cross_correlation(v1 @ w, v2 @ w).detach()
    torch.testing.assert_close(c, torch.eye(4, dtype=torch.float64), rtol=0, atol=0.1)


# --------------------------------------------------------------------------------------------- errors


def test_labels_are_not_required() -> None:
    assert BarlowTwinsLoss.requires_labels is False and BarlowTwinsLoss.supports_ref_emb is True


def test_error_missing_ref_emb() -> None:
    z1, _ = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "BarlowTwinsLoss: `ref_emb` must be given: the second view, row i pairing with row i of `embeddings`, "
            "got None."
        ),
    ):
        BarlowTwinsLoss()(z1)


@pytest.mark.parametrize("shape", [(7, 5), (8, 4)])
def test_error_shape_mismatch(shape: tuple[int, int]) -> None:
    z1, _ = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "BarlowTwinsLoss: `ref_emb` must be of the shape of `embeddings` (8, 5) (one row per sample), "
            f"got shape {shape}."
        ),
    ):
        BarlowTwinsLoss()(z1, ref_emb=torch.zeros(shape, dtype=torch.float64))


def test_error_single_row() -> None:
    z1, z2 = _views(0, n=1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "BarlowTwinsLoss: `embeddings` must be at least 2 rows (each dimension is standardised over the batch), "
            "got 1 row(s)."
        ),
    ):
        BarlowTwinsLoss()(z1, ref_emb=z2)


@pytest.mark.parametrize("arg", ["embeddings", "ref_emb"])
def test_error_non_finite(arg: str) -> None:
    z1, z2 = _views(0)
    (z1 if arg == "embeddings" else z2)[3, 1] = float("nan")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"BarlowTwinsLoss: `{arg}` must be finite (no NaN or Inf); check the model's outputs and learning rate, "
            "got 1 row(s) containing NaN or Inf."
        ),
    ):
        BarlowTwinsLoss()(z1, ref_emb=z2)


@pytest.mark.parametrize("arg", ["labels", "ref_labels"])
def test_error_labels_given(arg: str) -> None:
    z1, z2 = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"BarlowTwinsLoss: `{arg}` must be None: BarlowTwinsLoss is self-supervised (pass the second view as "
            "`ref_emb`), got Tensor."
        ),
    ):
        BarlowTwinsLoss()(z1, ref_emb=z2, **{arg: torch.zeros(8, dtype=torch.long)})


def test_error_indices_tuple_given() -> None:
    z1, z2 = _views(0)
    with pytest.raises(ValueError, match=re.escape("BarlowTwinsLoss: `indices_tuple` must be None")):
        BarlowTwinsLoss()(z1, indices_tuple=(torch.tensor([0]),) * 3, ref_emb=z2)


def test_error_distance_given() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "BarlowTwinsLoss: `distance` must be None: the two views are compared coordinate-wise, "
            "got CosineSimilarity."
        ),
    ):
        BarlowTwinsLoss(distance=CosineSimilarity())


@pytest.mark.parametrize(
    "kwargs,rule",
    [
        ({"lambd": -1}, "`lambd` must be a number >= 0, got -1."),
        ({"eps": -1e-3}, "`eps` must be a number >= 0, got -0.001."),
        ({"scale_loss": 0}, "`scale_loss` must be a number > 0, got 0."),
        ({"lambd": float("nan")}, "`lambd` must be a number, not NaN, got nan."),
    ],
)
def test_error_bad_arguments(kwargs: dict, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"BarlowTwinsLoss: {rule}")):
        BarlowTwinsLoss(**kwargs)
