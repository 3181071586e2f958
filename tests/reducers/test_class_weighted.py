from __future__ import annotations

import re

import pytest
import torch

from dmlkit.reducers import ClassWeightedReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import KINDS, make_group
from tests.reference.reducers import class_weighted_mean

WEIGHTS = [0.5, 2.0, 3.5]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(kind: TermKind, seed: int) -> None:
    g = make_group(kind, seed)
    got = ClassWeightedReducer(WEIGHTS)(g.terms, g.embeddings, g.labels)
    expected = class_weighted_mean(g.values, g.anchors, g.labels.tolist(), WEIGHTS)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_weight_of_the_anchor_label() -> None:
    # Pairs (0, 2) and (2, 0): the first is weighted by label 1's weight, the second by label 0's.
    labels = torch.tensor([1, 1, 0])
    terms = Terms(torch.tensor([1.0, 1.0]), torch.tensor([0, 2]), TermKind.NEG_PAIR)
    assert ClassWeightedReducer([10.0, 2.0])(terms, torch.zeros(3, 2), labels).item() == 6.0


@pytest.mark.parametrize(
    "weights", [[0.5, 2.0, 3.5], (0.5, 2.0, 3.5), torch.tensor(WEIGHTS), torch.tensor(WEIGHTS, dtype=torch.float16)]
)
def test_weights_accepted_as_sequence_or_tensor(weights: object) -> None:
    g = make_group(TermKind.ELEMENT, 2)
    got = ClassWeightedReducer(weights)(g.terms, g.embeddings, g.labels)  # type: ignore[arg-type]
    assert got.dtype == torch.float64
    expected = class_weighted_mean(g.values, g.anchors, g.labels.tolist(), WEIGHTS)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_integer_weights() -> None:
    terms = Terms(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    assert ClassWeightedReducer([1, 3])(terms, torch.zeros(2, 2), torch.tensor([0, 1])).item() == 3.5


def test_weights_are_a_buffer() -> None:
    reducer = ClassWeightedReducer(WEIGHTS)
    assert "weights" in reducer.state_dict()
    assert reducer.double().weights.dtype == torch.float64


def test_weights_are_differentiable_when_given_as_a_learnable_tensor() -> None:
    weights = torch.tensor(WEIGHTS, dtype=torch.float64, requires_grad=True)
    g = make_group(TermKind.ELEMENT, 3)
    ClassWeightedReducer(weights)(g.terms, g.embeddings, g.labels).backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind: TermKind) -> None:
    g = make_group(kind, 4, hinge=False)
    values = g.terms.values.detach().requires_grad_()
    fn = ClassWeightedReducer(WEIGHTS)
    assert torch.autograd.gradcheck(lambda v: fn(Terms(v, g.terms.anchors, kind), g.embeddings, g.labels), (values,))


def test_labels_required() -> None:
    expected = "ClassWeightedReducer: `labels` must be given (weights are looked up by the anchors' labels), got None."
    with pytest.raises(ValueError, match=re.escape(expected)):
        ClassWeightedReducer(WEIGHTS)(Terms(torch.ones(2), torch.arange(2)), torch.zeros(2, 2))


def test_label_out_of_range() -> None:
    expected = (
        "ClassWeightedReducer: `weights` must be long enough to index every anchor label (largest label 3), "
        "got 3 weight(s)."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        ClassWeightedReducer(WEIGHTS)(Terms(torch.ones(2), torch.arange(2)), torch.zeros(2, 2), torch.tensor([3, 0]))


def test_only_anchor_labels_must_be_in_range() -> None:
    # Element 1 has label 9 but anchors nothing.
    terms = Terms(torch.ones(2), torch.tensor([0, 0]), TermKind.POS_PAIR)
    assert ClassWeightedReducer(WEIGHTS)(terms, torch.zeros(2, 2), torch.tensor([2, 9])).item() == 3.5


def test_negative_label() -> None:
    expected = "ClassWeightedReducer: `labels` must be >= 0 to index `weights`, got label -1."
    with pytest.raises(ValueError, match=re.escape(expected)):
        ClassWeightedReducer(WEIGHTS)(Terms(torch.ones(2), torch.arange(2)), torch.zeros(2, 2), torch.tensor([-1, 0]))


@pytest.mark.parametrize(
    ("weights", "error", "expected"),
    [
        ("abc", TypeError, "ClassWeightedReducer: `weights` must be a 1-D tensor or a sequence of numbers, got str."),
        (3.0, TypeError, "ClassWeightedReducer: `weights` must be a 1-D tensor or a sequence of numbers, got float."),
        ([], ValueError, "ClassWeightedReducer: `weights` must be 1-D with one weight per class, got shape (0,)."),
        (
            torch.ones(2, 2),
            ValueError,
            "ClassWeightedReducer: `weights` must be 1-D with one weight per class, got shape (2, 2).",
        ),
        (
            [1.0, float("nan")],
            ValueError,
            "ClassWeightedReducer: `weights` must be finite (no NaN or Inf), got [1.0, nan].",
        ),
        (
            torch.tensor([True]),
            TypeError,
            "ClassWeightedReducer: `weights` must be real numbers, got dtype torch.bool.",
        ),
    ],
)
def test_invalid_weights(weights: object, error: type[Exception], expected: str) -> None:
    with pytest.raises(error, match=re.escape(expected)):
        ClassWeightedReducer(weights)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_pml_parity(kind: TermKind) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(kind, 5)
    ours = ClassWeightedReducer(WEIGHTS)(g.terms, g.embeddings, g.labels)
    theirs = pml.ClassWeightedReducer(torch.tensor(WEIGHTS))(g.pml_loss_dict(), g.embeddings, g.labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
