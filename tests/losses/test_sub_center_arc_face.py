"""SubCenterArcFaceLoss against the float64 oracle in tests/reference/sub_center_arc_face.py, its outlier
search, autograd, bfloat16 autocast, pytorch-metric-learning parity, training, and argument errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dmlkit.distances import LpDistance
from dmlkit.losses import margin_softmax
from dmlkit.losses.sub_center_arc_face import SubCenterArcFaceLoss
from tests.losses import margin_softmax_checks as checks
from tests.reference import sub_center_arc_face as ref
from tests.reference.margin_softmax import miner_weights, weighted_mean


@pytest.mark.parametrize("sub_centers,margin,scale", [(3, 28.6, 64.0), (1, 10.0, 4.0), (2, 45.0, 8.0)])
def test_matches_oracle(sub_centers: int, margin: float, scale: float, product_path: str) -> None:
    for seed in range(3):
        emb, labels = checks.problem(seed, scale=2.0)
        loss_fn = SubCenterArcFaceLoss(4, 5, margin=margin, scale=scale, sub_centers=sub_centers)
        w = checks.weights(loss_fn)
        values = ref.sub_center_arc_face_values(emb.tolist(), labels.tolist(), w, sub_centers, margin, scale)
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_many_classes_path_matches_oracle_and_gradcheck() -> None:
    # more classes than dimensions: the own sub-centres are gathered instead of read from all the cosines
    for seed in range(3):
        emb, labels = checks.problem(seed, n=9, d=3, classes=6, scale=2.0)
        loss_fn = SubCenterArcFaceLoss(6, 3, margin=20.0, scale=4.0, sub_centers=2).double()
        w = checks.weights(loss_fn)
        values = ref.sub_center_arc_face_values(emb.tolist(), labels.tolist(), w, 2, 20.0, 4.0)
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)
    emb, labels = checks.problem(7, n=5, d=2, classes=4)
    assert checks.gradcheck(SubCenterArcFaceLoss(4, 2, margin=20, scale=2, sub_centers=3), emb, labels)


def test_logits_are_the_best_sub_centre_and_w_has_pml_layout() -> None:
    emb, _ = checks.problem(5)
    loss_fn = SubCenterArcFaceLoss(num_classes=4, embedding_size=5, sub_centers=3, scale=2)
    assert loss_fn.W.shape == (5, 12) and loss_fn.num_classes == 4 and loss_fn.sub_centers == 3
    expected = [[2 * c for c in row] for row in ref.class_cosines(emb.tolist(), checks.weights(loss_fn), 3)]
    assert torch.allclose(loss_fn.get_logits(emb), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_miner_output_weights_the_samples() -> None:
    emb, labels = checks.problem(4)
    loss_fn = SubCenterArcFaceLoss(4, 5, scale=3)
    triplets = (torch.tensor([0, 0, 5]), torch.tensor([1, 2, 6]), torch.tensor([3, 3, 3]))
    values = ref.sub_center_arc_face_values(emb.tolist(), labels.tolist(), checks.weights(loss_fn), 3, 28.6, 3)
    expected = weighted_mean(values, miner_weights([t.tolist() for t in triplets], len(labels)))
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def test_gradcheck() -> None:
    emb, labels = checks.problem(2, n=5, d=3, classes=3)
    assert checks.gradcheck(SubCenterArcFaceLoss(3, 3, margin=20, scale=2, sub_centers=2), emb, labels)


def _formula_loss(loss_fn: SubCenterArcFaceLoss, emb: torch.Tensor, labels: torch.Tensor, w: torch.Tensor):
    """The loss written with autograd: normalised rows and columns (norm floor 1e-12), the maximum over each
    class's sub-centres (``max`` routes a tie to the first), ArcFace's target, cross-entropy."""
    x = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit = w / w.norm(dim=0, keepdim=True).clamp_min(1e-12)
    cos = (x @ unit).view(len(x), loss_fn.num_classes, loss_fn.sub_centers).max(dim=2).values
    m = math.radians(loss_fn.margin)
    own = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
    sine = ((1 - own) * (1 + own)).clamp_min(1e-12).sqrt()
    target = torch.where(own >= -math.cos(m), own * math.cos(m) - sine * math.sin(m), own - m * math.sin(m))
    logits = cos.scatter(1, labels.unsqueeze(1), target.unsqueeze(1)) * loss_fn.scale
    return torch.nn.functional.cross_entropy(logits, labels)


@pytest.fixture(params=["one product", "one sub-centre at a time"])
def product_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on both computations of the best sub-centre (small problems take the first by default)."""
    if request.param != "one product":
        monkeypatch.setattr(margin_softmax, "ONE_PRODUCT_CELLS", 0)
    return str(request.param)


@pytest.mark.parametrize("sub_centers", [1, 2, 3])
def test_gradients_equal_autograd_of_the_formula_with_zero_and_tied_columns(
    sub_centers: int, product_path: str
) -> None:
    emb, labels = checks.problem(11, n=10, d=4, classes=5, scale=3.0)
    loss_fn = SubCenterArcFaceLoss(5, 4, margin=25.0, scale=3.0, sub_centers=sub_centers).double()
    with torch.no_grad():
        w = loss_fn.W.view(4, 5, sub_centers)
        w[:, 1, :] = 0.0  # every sub-centre of class 1 is below the norm floor
        if sub_centers > 1:
            w[:, 2, 1] = w[:, 2, 0] * 2.0  # a tie: the same direction twice, the first must win
    ours_x, ref_x = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss_fn(ours_x, labels).backward()
    ref_w = loss_fn.W.detach().clone().requires_grad_()
    expected = _formula_loss(loss_fn, ref_x, labels, ref_w)
    expected.backward()
    assert loss_fn(emb, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(ours_x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(loss_fn.W.grad, ref_w.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_labels", [True, False])
def test_best_sub_centre_logits_gradcheck(with_labels: bool, product_path: str) -> None:
    # both outputs (the logits and each sample's own-class logit) at once, with the weights unnormalised
    emb, labels = checks.problem(3, n=7, d=3, classes=4)
    x = (emb / emb.norm(dim=1, keepdim=True)).requires_grad_()
    w = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()

    def fn(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return margin_softmax.center_logits(x, w, 2.5, 3, labels if with_labels else None)

    assert torch.autograd.gradcheck(fn, (x, w))


def test_bf16_autocast_is_finite() -> None:
    checks.assert_finite_under_bf16_autocast(lambda: SubCenterArcFaceLoss(4, 6))


def test_class_weights_train() -> None:
    checks.assert_class_weights_train(lambda c, d: SubCenterArcFaceLoss(c, d))


@pytest.mark.parametrize("kwargs", [{}, {"sub_centers": 2, "margin": 10.0, "scale": 4.0}])
def test_pml_parity(kwargs: dict) -> None:
    for seed in range(2):
        emb, labels = checks.problem(seed, scale=3.0)
        ours = SubCenterArcFaceLoss(num_classes=4, embedding_size=5, **kwargs)
        pml = checks.pml_copy("SubCenterArcFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs)
        checks.assert_same_as_pml(ours, pml, emb, labels)
    pairs = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4]), torch.tensor([5]))
    ours = SubCenterArcFaceLoss(num_classes=4, embedding_size=5, **kwargs)
    pml = checks.pml_copy("SubCenterArcFaceLoss", ours, num_classes=4, embedding_size=5, **kwargs)
    checks.assert_same_as_pml(ours, pml, emb, labels, pairs)


# --------------------------------------------------------------------------------------------- outliers


@pytest.mark.parametrize("threshold", [30.0, 60.0, 75.0])
def test_outliers_match_oracle(threshold: float) -> None:
    for seed in range(3):
        emb, labels = checks.problem(seed, n=30, classes=5)
        labels[labels == 4] = 3  # class 4 has no samples
        loss_fn = SubCenterArcFaceLoss(5, 5, sub_centers=3)
        w = checks.weights(loss_fn)
        outliers, dominant = loss_fn.get_outliers(emb, labels, threshold=threshold)
        expected, expected_dominant = ref.outliers(emb.tolist(), labels.tolist(), w, 3, threshold)
        assert outliers.tolist() == expected and outliers.dtype == torch.int64
        columns = [c * 3 + k for c, k in enumerate(expected_dominant)]
        assert torch.equal(dominant, loss_fn.W.detach().double()[:, columns])


def test_outliers_alone_when_dominant_centres_are_not_wanted() -> None:
    emb, labels = checks.problem(1, n=20)
    loss_fn = SubCenterArcFaceLoss(4, 5)
    outliers, _ = loss_fn.get_outliers(emb, labels, threshold=40)
    alone = loss_fn.get_outliers(emb, labels, threshold=40, return_dominant_centers=False)
    assert isinstance(alone, torch.Tensor) and torch.equal(alone, outliers)
    assert loss_fn.get_outliers(emb, labels, threshold=180, return_dominant_centers=False).numel() == 0


def test_outliers_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = checks.problem(seed, n=40, classes=4)
        ours = SubCenterArcFaceLoss(4, 5)
        pml = pml_losses.SubCenterArcFaceLoss(num_classes=4, embedding_size=5)
        pml.W.data = ours.W.detach().clone()
        outliers, dominant = ours.get_outliers(emb, labels, threshold=50)
        pml_outliers, pml_dominant = pml.get_outliers(emb, labels, threshold=50)
        assert outliers.tolist() == pml_outliers.long().tolist()
        assert 0 < len(outliers) < len(labels)
        present = labels.unique()
        assert torch.allclose(dominant[:, present], pml_dominant[:, present])


def test_outlier_argument_errors() -> None:
    loss_fn = SubCenterArcFaceLoss(3, 4)
    emb = torch.randn(2, 4)
    with pytest.raises(
        ValueError, match=re.escape("SubCenterArcFaceLoss.get_outliers: `threshold` must be a number >= 0 and <= 180")
    ):
        loss_fn.get_outliers(emb, torch.tensor([0, 1]), threshold=200)
    with pytest.raises(
        ValueError,
        match=re.escape("SubCenterArcFaceLoss.get_outliers: `labels` must be class indices in [0, 3), got 5."),
    ):
        loss_fn.get_outliers(emb, torch.tensor([0, 5]))


def test_constructor_errors() -> None:
    with pytest.raises(
        TypeError, match=re.escape("SubCenterArcFaceLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")
    ):
        SubCenterArcFaceLoss(3, 4, distance=LpDistance())
    with pytest.raises(
        ValueError, match=re.escape("SubCenterArcFaceLoss: `sub_centers` must be an integer >= 1, got 0.")
    ):
        SubCenterArcFaceLoss(3, 4, sub_centers=0)
    with pytest.raises(ValueError, match=re.escape("SubCenterArcFaceLoss: `margin` must be a number >= 0 and < 180")):
        SubCenterArcFaceLoss(3, 4, margin=-5)
