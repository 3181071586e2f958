"""NormalizedSoftmaxLoss against the float64 oracle in tests/reference/normalized_softmax.py under several
distances, autograd, bfloat16 autocast, pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import re

import pytest
import torch

from dmlkit.losses.normalized_softmax import NormalizedSoftmaxLoss
from tests.losses import margin_softmax_checks as checks
from tests.losses.cases import SOFTMAX_LOSS_DISTANCES
from tests.reference import normalized_softmax as ref
from tests.reference.margin_softmax import miner_weights, weighted_mean


@pytest.mark.parametrize("distance", list(SOFTMAX_LOSS_DISTANCES))
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_matches_oracle(distance: str, temperature: float) -> None:
    make_distance, matrix, higher_is_closer, _ = SOFTMAX_LOSS_DISTANCES[distance]
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=2.0)
        loss_fn = NormalizedSoftmaxLoss(4, 5, temperature=temperature, distance=make_distance())
        values = ref.normalized_softmax_values(
            emb.tolist(), labels.tolist(), checks.weights(loss_fn), temperature, matrix, higher_is_closer
        )
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_miner_output_weights_the_samples() -> None:
    emb, labels = checks.problem(4)
    loss_fn = NormalizedSoftmaxLoss(4, 5, temperature=0.5)
    triplets = (torch.tensor([0, 1, 1]), torch.tensor([2, 2, 2]), torch.tensor([3, 3, 11]))
    make_distance, matrix, _, _ = SOFTMAX_LOSS_DISTANCES["cosine"]
    values = ref.normalized_softmax_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 0.5, matrix)
    expected = weighted_mean(values, miner_weights([t.tolist() for t in triplets], len(labels)))
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_gradcheck(distance: str) -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    loss_fn = NormalizedSoftmaxLoss(3, 3, temperature=0.5, distance=SOFTMAX_LOSS_DISTANCES[distance][0]())
    assert checks.gradcheck(loss_fn, emb, labels)


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: NormalizedSoftmaxLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: NormalizedSoftmaxLoss(c, d))


@pytest.mark.parametrize("distance", list(SOFTMAX_LOSS_DISTANCES))
def test_pml_parity(distance: str) -> None:
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    make_distance, _, _, (pml_name, pml_kwargs) = SOFTMAX_LOSS_DISTANCES[distance]
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=3.0)
        ours = NormalizedSoftmaxLoss(4, 5, temperature=0.1, distance=make_distance())
        pml = checks.pml_copy(
            "NormalizedSoftmaxLoss",
            ours,
            num_classes=4,
            embedding_size=5,
            temperature=0.1,
            distance=getattr(pml_distances, pml_name)(**pml_kwargs),
        )
        checks.assert_same_as_pml(ours, pml, emb, labels)
        indices = (torch.tensor([0, 3]), torch.tensor([1, 1]), torch.tensor([2, 2]))
        ours.W.grad = pml.W.grad = None
        checks.assert_same_as_pml(ours, pml, emb, labels, indices)


def test_error_temperature() -> None:
    with pytest.raises(
        ValueError, match=re.escape("NormalizedSoftmaxLoss: `temperature` must be a number > 0, got 0.")
    ):
        NormalizedSoftmaxLoss(3, 4, temperature=0)
