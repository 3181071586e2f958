"""AdaFaceLoss against the float64 oracle in tests/reference/ada_face.py (values and running statistics),
gradients with the feature norms held fixed, bfloat16 autocast, training, and argument errors.
pytorch-metric-learning has no AdaFace, so there is no parity test."""

from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import LpDistance
from dmlkit.losses.ada_face import AdaFaceLoss
from tests.losses import margin_softmax_checks as checks
from tests.reference import ada_face as ref
from tests.reference.margin_softmax import miner_weights, weighted_mean

OPTIONS = [
    {"margin": 0.4, "h": 0.333, "scale": 64.0, "t_alpha": 0.01},
    {"margin": 0.5, "h": 1.0, "scale": 8.0, "t_alpha": 0.5},
    {"margin": 0.2, "h": 0.1, "scale": 4.0, "t_alpha": 1.0},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle_over_consecutive_batches(options: dict) -> None:
    loss_fn = AdaFaceLoss(4, 5, **options).double()
    mean, std = 20.0, 100.0
    for seed in range(3):
        emb, labels = checks.problem(seed, scale=6.0 + 4 * seed)  # norms around 13, 22, 31
        mean, std = ref.updated_statistics(emb.tolist(), mean, std, options["t_alpha"])
        values = ref.ada_face_values(
            emb.tolist(),
            labels.tolist(),
            checks.weights(loss_fn),
            options["margin"],
            options["h"],
            options["scale"],
            mean,
            std,
        )
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)
        assert loss_fn.batch_mean.item() == pytest.approx(mean, rel=1e-12)
        assert loss_fn.batch_std.item() == pytest.approx(std, rel=1e-12)


def test_margin_depends_on_the_feature_norm() -> None:
    emb, labels = checks.problem(3, scale=10.0)
    loss_fn = AdaFaceLoss(4, 5, h=1.0, t_alpha=1.0).eval()
    loss_fn.batch_mean.fill_(15.0)
    loss_fn.batch_std.fill_(5.0)
    assert loss_fn(emb, labels).item() != pytest.approx(loss_fn(emb * 3, labels).item(), rel=1e-3)


@pytest.mark.filterwarnings("ignore:AdaFaceLoss. every label in the batch")
def test_statistics_update_in_training_only_and_the_std_needs_two_samples() -> None:
    emb, labels = checks.problem(1, scale=5.0)
    loss_fn = AdaFaceLoss(4, 5, t_alpha=0.5).eval()
    loss_fn(emb, labels)
    assert loss_fn.batch_mean.item() == 20.0 and loss_fn.batch_std.item() == 100.0
    loss_fn.train()
    loss_fn(emb[:1], labels[:1])
    expected_mean = 0.5 * 20 + 0.5 * min(max(emb[0].norm().item(), 1e-3), 100)
    assert loss_fn.batch_mean.item() == pytest.approx(expected_mean, rel=1e-6)
    assert loss_fn.batch_std.item() == 100.0
    assert set(loss_fn.state_dict()) == {"W", "batch_mean", "batch_std"}


def test_miner_output_weights_the_samples() -> None:
    emb, labels = checks.problem(4, scale=10.0)
    loss_fn = AdaFaceLoss(4, 5, scale=4).eval()
    triplets = (torch.tensor([0, 0, 5]), torch.tensor([1, 2, 6]), torch.tensor([3, 3, 3]))
    values = ref.ada_face_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 0.4, 0.333, 4, 20.0, 100.0)
    expected = weighted_mean(values, miner_weights([t.tolist() for t in triplets], len(labels)))
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def _fixed_statistics_loss() -> AdaFaceLoss:
    loss_fn = AdaFaceLoss(3, 3, margin=0.3, h=1.0, scale=3).eval()
    loss_fn.batch_mean.fill_(2.0)
    loss_fn.batch_std.fill_(1.0)
    return loss_fn


def test_gradient_holds_the_norms_fixed() -> None:
    """The paper stops the gradient through the norm: compare with central differences of the oracle whose
    norms are frozen at their current values (the margin's own gradient is checked here too)."""
    emb, labels = checks.problem(2, n=5, d=3, classes=3, scale=2.0)
    loss_fn = _fixed_statistics_loss()
    w = checks.weights(loss_fn)
    norms = [min(max(row.norm().item(), 1e-3), 100.0) for row in emb]

    def oracle(x: torch.Tensor) -> float:
        values = ref.ada_face_values(x.tolist(), labels.tolist(), w, 0.3, 1.0, 3, 2.0, 1.0, norms=norms)
        return sum(values) / len(values)

    x = emb.clone().requires_grad_()
    loss_fn(x, labels).backward()
    numeric = torch.zeros_like(emb)
    for i in range(emb.shape[0]):
        for j in range(emb.shape[1]):
            step = torch.zeros_like(emb)
            step[i, j] = 1e-6
            numeric[i, j] = (oracle(emb + step) - oracle(emb - step)) / 2e-6
    assert torch.allclose(x.grad, numeric, atol=1e-7)


def test_gradcheck_with_respect_to_the_weights() -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3, scale=2.0)
    loss_fn = _fixed_statistics_loss()
    w = loss_fn.W.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(loss_fn, {"W": w}, (emb, labels)), (w,))


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: AdaFaceLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: AdaFaceLoss(c, d))


def test_errors() -> None:
    with pytest.raises(
        TypeError, match=re.escape("AdaFaceLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        AdaFaceLoss(3, 4, distance=LpDistance())
    with pytest.raises(ValueError, match=re.escape("AdaFaceLoss: `h` must be a number >= 0, got -0.1.")):
        AdaFaceLoss(3, 4, h=-0.1)
    with pytest.raises(ValueError, match=re.escape("AdaFaceLoss: `margin` must be a number >= 0, got -1.")):
        AdaFaceLoss(3, 4, margin=-1)
    for bad in (0, 1.5):
        with pytest.raises(
            ValueError, match=re.escape(f"AdaFaceLoss: `t_alpha` must be a number > 0 and <= 1, got {bad!r}.")
        ):
            AdaFaceLoss(3, 4, t_alpha=bad)
