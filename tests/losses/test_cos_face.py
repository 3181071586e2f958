"""CosFaceLoss against the float64 oracle in tests/reference/cos_face.py, autograd, bfloat16 autocast,
pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import DotProductSimilarity
from dmlkit.losses.cos_face import CosFaceLoss
from dmlkit.types import Pairs
from tests.losses import margin_softmax_checks as checks
from tests.reference import cos_face as ref


@pytest.mark.parametrize("margin,scale", [(0.35, 64.0), (0.0, 1.0), (0.8, 5.0)])
def test_matches_oracle(margin: float, scale: float) -> None:
    checks.assert_matches_oracle(
        lambda: CosFaceLoss(4, 5, margin=margin, scale=scale),
        lambda emb, labels, w: ref.cos_face_values(emb, labels, w, margin, scale),
    )


def test_miner_output_weights_the_samples() -> None:
    pairs = Pairs(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([7]))
    checks.assert_miner_output_weights_the_samples(
        CosFaceLoss(4, 5, scale=3), lambda emb, labels, w: ref.cos_face_values(emb, labels, w, 0.35, 3), pairs
    )


def test_gradcheck() -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    assert checks.gradcheck(CosFaceLoss(3, 3, scale=2), emb, labels)


def test_zero_margin_is_the_scaled_cosine_softmax() -> None:
    emb, labels = checks.problem(6)
    loss_fn = CosFaceLoss(4, 5, margin=0, scale=5)
    expected = torch.nn.functional.cross_entropy(loss_fn.get_logits(emb), labels)
    assert loss_fn(emb, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: CosFaceLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: CosFaceLoss(c, d))


@pytest.mark.parametrize("kwargs", [{}, {"margin": 0.1, "scale": 4.0}])
def test_pml_parity(kwargs: dict) -> None:
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=3.0)
        ours = CosFaceLoss(num_classes=4, embedding_size=5, **kwargs)
        pml = checks.pml_copy("CosFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs)
        checks.assert_same_as_pml(ours, pml, emb, labels)


def test_pml_parity_with_miner_output() -> None:
    emb, labels = checks.problem(8)
    triplets = (torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([3, 9]))
    ours = CosFaceLoss(4, 5)
    pml = checks.pml_copy("CosFaceLoss", ours, num_classes=4, embedding_size=5)
    checks.assert_same_as_pml(ours, pml, emb, labels, triplets)


def test_error_distance_must_be_cosine() -> None:
    with pytest.raises(
        TypeError, match=re.escape("CosFaceLoss: `distance` must be a CosineSimilarity, got 'DotProductSimilarity'.")
    ):
        CosFaceLoss(3, 4, distance=DotProductSimilarity())


def test_error_margin_and_scale() -> None:
    with pytest.raises(ValueError, match=re.escape("CosFaceLoss: `margin` must be a number >= 0, got -0.1.")):
        CosFaceLoss(3, 4, margin=-0.1)
    with pytest.raises(ValueError, match=re.escape("CosFaceLoss: `scale` must be a number > 0, got -1.")):
        CosFaceLoss(3, 4, scale=-1)
    with pytest.raises(ValueError, match=re.escape("CosFaceLoss: `embedding_size` must be a positive integer, got 0.")):
        CosFaceLoss(3, 0)
