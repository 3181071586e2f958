"""VICRegLoss against the float64 oracle in tests/reference/vicreg.py, autograd, errors and PML."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.losses.vicreg import VICRegLoss
from dmlkit.reducers import MultipleReducers, SumReducer, ThresholdReducer
from dmlkit.regularizers import LpRegularizer
from tests.reference import vicreg as ref

PARAMS = [
    {},
    {"invariance_lambda": 1.0, "variance_mu": 2.0, "covariance_v": 3.0},
    {"invariance_lambda": 0.0, "variance_mu": 25.0, "covariance_v": 0.5, "eps": 1e-2},
]


def _views(seed: int, n: int = 8, d: int = 5, scale: float = 0.6) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("scale", [0.3, 0.6, 2.0])
def test_matches_oracle(params: dict, scale: float) -> None:
    loss_fn = VICRegLoss(**params)
    for seed in range(3):
        z1, z2 = _views(seed, scale=scale)
        assert loss_fn(z1, ref_emb=z2).item() == pytest.approx(ref.vicreg_loss(z1, z2, **params), rel=1e-10)


def test_oracle_sanity_hand_computed() -> None:
    # two samples in 2-D: z1 = [[1, 0], [-1, 0]], z2 = [[0, 1], [0, -1]]
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    # invariance: every squared difference is 1 -> 1; variances: z1 = (2, 0), z2 = (0, 2) (unbiased)
    # v(z1) = (relu(1 - sqrt(2 + eps)) + relu(1 - sqrt(eps))) / 2 dims; covariances are all 0
    eps = 1e-4
    v = (0.0 + (1 - eps**0.5)) / 2
    expected = 25 * 1.0 + 25 * (v + v) / 2 + 0.0
    assert ref.vicreg_loss(z1, z2) == pytest.approx(expected, rel=1e-12)
    assert VICRegLoss()(z1, ref_emb=z2).item() == pytest.approx(expected, rel=1e-12)


def test_sub_losses_keep_their_names() -> None:
    z1, z2 = _views(1)
    a, b = ref._rows(z1), ref._rows(z2)
    eps = 1e-4
    # sum each group instead of averaging it: invariance and variances become sums over samples / dimensions
    reducer = MultipleReducers(
        {"invariance_loss": SumReducer(), "variance_loss1": SumReducer(), "variance_loss2": SumReducer()}
    )
    n, d = z1.shape
    expected = (
        25 * ref.invariance(a, b) * n
        + 25 * ref.variance(a, eps) / 2 * d
        + 25 * ref.variance(b, eps) / 2 * d
        + ref.covariance(a)
        + ref.covariance(b)
    )
    assert VICRegLoss(reducer=reducer)(z1, ref_emb=z2).item() == pytest.approx(expected, rel=1e-10)


def test_identical_views_have_no_invariance_term() -> None:
    z1, _ = _views(2)
    got = VICRegLoss(variance_mu=0, covariance_v=0)(z1, ref_emb=z1.clone())
    assert got.item() == 0.0


def test_batch_of_two_rows() -> None:
    z1, z2 = _views(3, n=2)
    assert VICRegLoss()(z1, ref_emb=z2).item() == pytest.approx(ref.vicreg_loss(z1, z2), rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("params", PARAMS)
def test_gradcheck(params: dict) -> None:
    z1, z2 = _views(4, n=6, d=3, scale=0.5)  # standard deviations well below 1: the variance hinge is active
    loss_fn = VICRegLoss(**params)
    assert torch.autograd.gradcheck(lambda x, y: loss_fn(x, ref_emb=y), (z1.requires_grad_(), z2.requires_grad_()))


def test_collapsed_views_have_finite_gradients() -> None:
    # every sample the same: variance 0 in every dimension, the eps keeps the square root differentiable
    z = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    loss = VICRegLoss()(z, ref_emb=w)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(z.grad).all()) and bool(torch.isfinite(w.grad).all())
    assert loss.item() == pytest.approx(25 * (1 - 1e-2), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-8, 1e4])
def test_extreme_scales_stay_finite(scale: float) -> None:
    z1, z2 = _views(5, scale=scale)
    x, y = z1.float().requires_grad_(), z2.float().requires_grad_()
    loss = VICRegLoss()(x, ref_emb=y)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())


# --------------------------------------------------------------------------------------------- errors


def test_labels_are_not_required() -> None:
    assert VICRegLoss.requires_labels is False and VICRegLoss.supports_ref_emb is True


def test_error_missing_ref_emb() -> None:
    z1, _ = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `ref_emb` must be given: the second view, row i pairing with row i of `embeddings`, got None."
        ),
    ):
        VICRegLoss()(z1)


@pytest.mark.parametrize("shape", [(7, 5), (8, 4)])
def test_error_shape_mismatch(shape: tuple[int, int]) -> None:
    z1, _ = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `ref_emb` must be of the shape of `embeddings` (8, 5) (one row per sample), "
            f"got shape {shape}."
        ),
    ):
        VICRegLoss()(z1, ref_emb=torch.zeros(shape, dtype=torch.float64))


@pytest.mark.parametrize("arg", ["labels", "ref_labels"])
def test_error_labels_given(arg: str) -> None:
    z1, z2 = _views(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"VICRegLoss: `{arg}` must be None: VICRegLoss is self-supervised (pass the second view as `ref_emb`), "
            "got Tensor."
        ),
    ):
        VICRegLoss()(z1, ref_emb=z2, **{arg: torch.zeros(8, dtype=torch.long)})


def test_error_indices_tuple_given() -> None:
    z1, z2 = _views(0)
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `indices_tuple` must be None: VICRegLoss is self-supervised (pass the second view as "
            "`ref_emb`), got tuple."
        ),
    ):
        VICRegLoss()(z1, indices_tuple=t, ref_emb=z2)


def test_error_single_row() -> None:
    z1, z2 = _views(0, n=1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `embeddings` must be at least 2 rows (variances and covariances are over the batch), "
            "got 1 row(s)."
        ),
    ):
        VICRegLoss()(z1, ref_emb=z2)


def test_error_non_finite_ref_emb() -> None:
    z1, z2 = _views(0)
    z2[3, 1] = float("nan")
    with pytest.raises(ValueError, match=re.escape("VICRegLoss: `ref_emb` must be finite (no NaN or Inf)")):
        VICRegLoss()(z1, ref_emb=z2)


def test_error_distance_given() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `distance` must be None: the two views are compared coordinate-wise, got LpDistance."
        ),
    ):
        VICRegLoss(distance=LpDistance())


def test_error_embedding_regularizer_given() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "VICRegLoss: `embedding_regularizer` must be None: the variance and covariance terms regularise, "
            "got LpRegularizer."
        ),
    ):
        VICRegLoss(embedding_regularizer=LpRegularizer())


@pytest.mark.parametrize("arg", ["invariance_lambda", "variance_mu", "covariance_v", "eps"])
def test_error_negative_weights(arg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"VICRegLoss: `{arg}` must be a number >= 0, got -1.")):
        VICRegLoss(**{arg: -1})


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_pml_parity(params: dict, scale: float) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours, theirs = VICRegLoss(**params), pml_losses.VICRegLoss(**params)
    for seed in range(4):
        z1, z2 = _views(seed, n=16, d=6, scale=scale)
        x1, y1 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        x2, y2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        a, b = ours(x1, ref_emb=y1), theirs(x2, ref_emb=y2)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(y1.grad, y2.grad, rtol=0, atol=1e-6)


def test_pml_parity_with_per_group_reducers() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    ours = VICRegLoss(
        reducer=MultipleReducers({"invariance_loss": SumReducer(), "variance_loss2": ThresholdReducer(low=0.5)})
    )
    theirs = pml_losses.VICRegLoss(
        reducer=pml_reducers.MultipleReducers(
            {"invariance_loss": pml_reducers.SumReducer(), "variance_loss2": pml_reducers.ThresholdReducer(low=0.5)}
        )
    )
    for seed in range(4):
        z1, z2 = _views(seed, n=16, d=6, scale=0.5)
        torch.testing.assert_close(ours(z1, ref_emb=z2), theirs(z1, ref_emb=z2), rtol=0, atol=1e-6)


def test_covariance_centred_in_chunks_matches_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmlkit.losses import vicreg

    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(10, 4, generator=g, dtype=torch.float64) * 2 + 30  # a large mean: centring matters
    z2 = z1 + 0.3 * torch.randn(10, 4, generator=g, dtype=torch.float64)
    results = []
    for rows in (1024, 3):
        monkeypatch.setattr(vicreg, "_CHUNK_ROWS", rows)
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        value = VICRegLoss()(a, ref_emb=b)
        value.backward()
        results.append((value.detach(), a.grad, b.grad))
        if rows == 3:
            inputs = (z1.clone().requires_grad_(), z2.clone().requires_grad_())  # hinge mostly inactive (std ~2)
            assert torch.autograd.gradcheck(lambda x, y: VICRegLoss()(x, ref_emb=y), inputs)
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
