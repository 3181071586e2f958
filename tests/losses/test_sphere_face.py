"""SphereFaceLoss against the float64 oracle in tests/reference/sphere_face.py, autograd, bfloat16 autocast,
pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import LpDistance
from dmlkit.losses.sphere_face import SphereFaceLoss
from tests.losses import margin_softmax_checks as checks
from tests.reference import sphere_face as ref


@pytest.mark.parametrize("margin,scale", [(4, 1.0), (2, 3.0), (3, 0.5)])
def test_matches_oracle(margin: int, scale: float) -> None:
    checks.assert_matches_oracle(
        lambda: SphereFaceLoss(4, 5, margin=margin, scale=scale),
        lambda emb, labels, w: ref.sphere_face_values(emb, labels, w, margin, scale),
    )


def test_weight_norms_do_not_matter() -> None:
    emb, labels = checks.problem(1)
    loss_fn = SphereFaceLoss(4, 5)
    before = loss_fn(emb, labels).item()
    with torch.no_grad():
        loss_fn.W.mul_(torch.tensor([0.1, 3.0, 7.0, 0.5]))
    assert loss_fn(emb, labels).item() == pytest.approx(before, rel=1e-6)


def test_miner_output_weights_the_samples() -> None:
    pairs = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([0]), torch.tensor([9]))
    checks.assert_miner_output_weights_the_samples(
        SphereFaceLoss(4, 5, margin=2), lambda emb, labels, w: ref.sphere_face_values(emb, labels, w, 2, 1), pairs
    )


def test_gradcheck() -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    assert checks.gradcheck(SphereFaceLoss(3, 3, margin=3), emb, labels)


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: SphereFaceLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: SphereFaceLoss(c, d, margin=2))


@pytest.mark.parametrize("kwargs", [{}, {"margin": 2, "scale": 3.0}])
def test_pml_parity(kwargs: dict) -> None:
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=2.0)
        ours = SphereFaceLoss(num_classes=4, embedding_size=5, **kwargs)
        pml = checks.pml_copy("SphereFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs)
        checks.assert_same_as_pml(ours, pml, emb, labels)
    triplets = (torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([3, 4]))
    ours = SphereFaceLoss(4, 5, **kwargs)
    pml = checks.pml_copy("SphereFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs)
    checks.assert_same_as_pml(ours, pml, emb, labels, triplets)


def test_error_distance_and_margin() -> None:
    with pytest.raises(
        TypeError, match=re.escape("SphereFaceLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        SphereFaceLoss(3, 4, distance=LpDistance())
    with pytest.raises(ValueError, match=re.escape("SphereFaceLoss: `margin` must be a positive integer")):
        SphereFaceLoss(3, 4, margin=1.5)
    with pytest.raises(ValueError, match=re.escape("SphereFaceLoss: `scale` must be a number > 0, got 0.")):
        SphereFaceLoss(3, 4, scale=0)
