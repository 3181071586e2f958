"""LargeMarginSoftmaxLoss against the float64 oracle in tests/reference/large_margin_softmax.py, autograd,
bfloat16 autocast, pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dmlkit.distances import LpDistance
from dmlkit.losses.large_margin_softmax import LargeMarginSoftmaxLoss
from dmlkit.losses.margin_softmax import multiple_angle_margin
from tests.losses import margin_softmax_checks as checks
from tests.reference import large_margin_softmax as ref
from tests.reference.margin_softmax import miner_weights, weighted_mean


@pytest.mark.parametrize("margin,scale", [(4, 1.0), (1, 1.0), (2, 0.5), (3, 2.0), (5, 1.0)])
def test_matches_oracle(margin: int, scale: float) -> None:
    for seed in range(3):
        emb, labels = checks.problem(seed)
        loss_fn = LargeMarginSoftmaxLoss(4, 5, margin=margin, scale=scale)
        values = ref.large_margin_softmax_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), margin, scale)
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 6])
def test_psi_is_the_papers_piecewise_function_and_decreasing(m: int) -> None:
    angles = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    psi = multiple_angle_margin(torch.cos(angles), m)
    expected = torch.tensor([ref.psi(math.cos(a), m) for a in angles.tolist()], dtype=torch.float64)
    assert torch.allclose(psi, expected, atol=1e-9)
    assert bool((psi[1:] < psi[:-1]).all())
    assert psi[-1].item() == pytest.approx(1 - 2 * m)  # psi(pi) = 1 - 2m, continuous


@pytest.mark.parametrize("m", [2, 4])
def test_psi_slope_at_pi_keeps_the_last_intervals_sign(m: int) -> None:
    cosine = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    multiple_angle_margin(cosine, m).backward()
    assert cosine.grad.item() == pytest.approx(m * m)  # d psi / d cos > 0: psi falls as theta grows


def test_miner_output_weights_the_samples() -> None:
    emb, labels = checks.problem(4)
    loss_fn = LargeMarginSoftmaxLoss(4, 5, margin=3)
    triplets = (torch.tensor([0, 0, 5]), torch.tensor([1, 2, 6]), torch.tensor([3, 3, 3]))
    values = ref.large_margin_softmax_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 3, 1)
    expected = weighted_mean(values, miner_weights([t.tolist() for t in triplets], len(labels)))
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("margin", [2, 4])
def test_gradcheck(margin: int) -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    assert checks.gradcheck(LargeMarginSoftmaxLoss(3, 3, margin=margin), emb, labels)


def test_get_logits_are_the_scaled_inner_products() -> None:
    emb, _ = checks.problem(5)
    loss_fn = LargeMarginSoftmaxLoss(4, 5, scale=2)
    assert torch.allclose(loss_fn.get_logits(emb), 2 * emb @ loss_fn.W.double(), atol=1e-12)


def test_margin_one_is_the_plain_softmax() -> None:
    emb, labels = checks.problem(6)
    loss_fn = LargeMarginSoftmaxLoss(4, 5, margin=1)
    expected = torch.nn.functional.cross_entropy(emb @ loss_fn.W.double(), labels)
    assert loss_fn(emb, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: LargeMarginSoftmaxLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: LargeMarginSoftmaxLoss(c, d, margin=2))


@pytest.mark.parametrize("kwargs", [{}, {"margin": 2, "scale": 0.5}, {"margin": 3}])
def test_pml_parity(kwargs: dict) -> None:
    for seed in range(2):
        emb, labels = checks.problem(seed)
        ours = LargeMarginSoftmaxLoss(num_classes=4, embedding_size=5, **kwargs)
        pml = checks.pml_copy("LargeMarginSoftmaxLoss", ours, num_classes=4, embedding_size=5, **kwargs)
        checks.assert_same_as_pml(ours, pml, emb, labels)


def test_pml_parity_with_miner_output() -> None:
    emb, labels = checks.problem(9)
    pairs = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4]), torch.tensor([5]))
    ours = LargeMarginSoftmaxLoss(4, 5)
    checks.assert_same_as_pml(
        ours, checks.pml_copy("LargeMarginSoftmaxLoss", ours, num_classes=4, embedding_size=5), emb, labels, pairs
    )


def test_error_distance_must_be_cosine() -> None:
    with pytest.raises(
        TypeError, match=re.escape("LargeMarginSoftmaxLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        LargeMarginSoftmaxLoss(3, 4, distance=LpDistance())


@pytest.mark.parametrize("bad", [0, 2.5, -1, True])
def test_error_margin_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"LargeMarginSoftmaxLoss: `margin` must be a positive integer (the angle multiplier m), got {bad!r}."
        ),
    ):
        LargeMarginSoftmaxLoss(3, 4, margin=bad)  # type: ignore[arg-type]


def test_integral_float_margin_is_accepted() -> None:
    assert LargeMarginSoftmaxLoss(3, 4, margin=3.0).margin == 3
