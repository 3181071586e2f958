"""ArcFaceLoss against the float64 oracle in tests/reference/arc_face.py, autograd, bfloat16 autocast,
pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dmlkit.distances import LpDistance
from dmlkit.losses.arc_face import ArcFaceLoss
from dmlkit.regularizers import LpRegularizer
from dmlkit.types import Triplets
from tests.losses import margin_softmax_checks as checks
from tests.reference import arc_face as ref
from tests.reference.margin_softmax import miner_weights, weighted_mean

OPTIONS = [(28.6, 64.0), (10.0, 4.0), (0.0, 1.0), (60.0, 8.0)]


@pytest.mark.parametrize("margin,scale", OPTIONS)
def test_matches_oracle(margin: float, scale: float) -> None:
    for seed in range(3):
        emb, labels = checks.problem(seed, scale=2.0)
        loss_fn = ArcFaceLoss(4, 5, margin=margin, scale=scale)
        values = ref.arc_face_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), margin, scale)
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_fallback_past_pi_minus_margin() -> None:
    torch.manual_seed(1)
    loss_fn = ArcFaceLoss(3, 4, margin=60, scale=2)
    labels = torch.tensor([0, 1, 2])
    emb = -loss_fn.W.detach().double().t() + 0.05 * torch.randn(3, 4, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(emb, loss_fn.W.detach().double().t(), dim=1)
    assert bool((torch.acos(cos) > math.pi - math.radians(60)).all())  # every sample takes the fallback
    values = ref.arc_face_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 60, 2)
    assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / 3, rel=1e-10)


def test_miner_output_weights_the_samples() -> None:
    emb, labels = checks.problem(4)
    loss_fn = ArcFaceLoss(4, 5, margin=20, scale=3)
    triplets = Triplets(torch.tensor([0, 0, 5]), torch.tensor([1, 2, 6]), torch.tensor([3, 3, 3]))
    values = ref.arc_face_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 20, 3)
    expected = weighted_mean(values, miner_weights([t.tolist() for t in triplets], len(labels)))
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def test_gradcheck() -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    assert checks.gradcheck(ArcFaceLoss(3, 3, margin=20, scale=2), emb, labels)


def test_get_logits_are_scaled_cosines_without_margin() -> None:
    emb, _ = checks.problem(5)
    loss_fn = ArcFaceLoss(4, 5, scale=3)
    expected = 3 * torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(loss_fn.W.double(), dim=0)
    assert torch.allclose(loss_fn.get_logits(emb), expected, atol=1e-12)


def test_margin_is_kept_in_degrees_and_w_has_pml_shape() -> None:
    loss_fn = ArcFaceLoss(num_classes=7, embedding_size=5)
    assert loss_fn.margin == 28.6 and loss_fn.scale == 64 and loss_fn.W.shape == (5, 7)
    assert loss_fn.W.dtype == torch.float32


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: ArcFaceLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: ArcFaceLoss(c, d))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("kwargs", [{}, {"margin": 10.0, "scale": 4.0}, {"margin": 50.0, "scale": 16.0}])
def test_pml_parity(kwargs: dict) -> None:
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=3.0)
        ours = ArcFaceLoss(num_classes=4, embedding_size=5, **kwargs)
        checks.assert_same_as_pml(
            ours, checks.pml_copy("ArcFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs), emb, labels
        )


def test_pml_parity_with_miner_output_and_weight_regularizer() -> None:
    pml_regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    emb, labels = checks.problem(7)
    pairs = (torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 5]), torch.tensor([6, 0]))
    ours = ArcFaceLoss(4, 5, weight_regularizer=LpRegularizer(), weight_reg_weight=0.3)
    pml = checks.pml_copy(
        "ArcFaceLoss",
        ours,
        num_classes=4,
        embedding_size=5,
        weight_regularizer=pml_regularizers.LpRegularizer(),
        weight_reg_weight=0.3,
    )
    checks.assert_same_as_pml(ours, pml, emb, labels, pairs)


# --------------------------------------------------------------------------------------------- errors


def test_error_distance_must_be_cosine() -> None:
    with pytest.raises(
        TypeError, match=re.escape("ArcFaceLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        ArcFaceLoss(3, 4, distance=LpDistance())


@pytest.mark.parametrize("bad", [-1.0, 180])
def test_error_margin(bad: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"ArcFaceLoss: `margin` must be a number >= 0 and < 180, got {bad!r}.")
    ):
        ArcFaceLoss(3, 4, margin=bad)


def test_error_scale() -> None:
    with pytest.raises(ValueError, match=re.escape("ArcFaceLoss: `scale` must be a number > 0, got 0.")):
        ArcFaceLoss(3, 4, scale=0)


def test_error_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match=re.escape("ArcFaceLoss: `labels` must be class indices in [0, 3), got 3.")):
        ArcFaceLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))
