from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.reducers import ThresholdReducer
from dmlkit.regularizers import RegularFaceRegularizer
from tests.reference.regularizers import mean, regular_face_values


def _x(seed: int = 0, n: int = 7, d: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_default_distance_is_cosine() -> None:
    assert isinstance(RegularFaceRegularizer().distance, CosineSimilarity)


def test_value_matches_oracle() -> None:
    x = _x()
    assert RegularFaceRegularizer()(x).item() == pytest.approx(mean(regular_face_values(x.tolist())), rel=1e-12)


def test_per_row_terms_match_oracle() -> None:
    x = _x(1)
    terms = RegularFaceRegularizer().compute_terms(x)
    assert terms.values.tolist() == pytest.approx(regular_face_values(x.tolist()), rel=1e-12)
    assert terms.anchors.tolist() == list(range(7))


def test_dot_product_similarity_is_honoured() -> None:
    x = _x(2)
    reg = RegularFaceRegularizer(distance=DotProductSimilarity(normalize_embeddings=False))
    assert reg(x).item() == pytest.approx(mean(regular_face_values(x.tolist(), "dot")), rel=1e-12)


def test_gradcheck() -> None:
    x = _x(3, n=4, d=3).requires_grad_()
    assert torch.autograd.gradcheck(RegularFaceRegularizer(), (x,))


def test_gradient_flows_through_the_selected_similarity_only() -> None:
    x = _x(4)
    rows = x.tolist()
    nearest = []
    for i, value in enumerate(regular_face_values(rows)):
        cos = torch.nn.functional.cosine_similarity(x[i : i + 1], x, dim=1)
        cos[i] = float("-inf")
        nearest.append(int(cos.argmax()))
        assert cos[nearest[-1]].item() == pytest.approx(value, rel=1e-12)
    ours = x.clone().requires_grad_()
    RegularFaceRegularizer()(ours).backward()
    chosen = x.clone().requires_grad_()
    unit = torch.nn.functional.normalize(chosen, dim=1)
    (unit * unit[torch.tensor(nearest)]).sum(dim=1).mean().backward()
    torch.testing.assert_close(ours.grad, chosen.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_pml_parity(similarity: str) -> None:
    pytest.importorskip("pytorch_metric_learning", reason="PML parity needs PML")
    from pytorch_metric_learning import distances as pml_distances
    from pytorch_metric_learning.regularizers import RegularFaceRegularizer as PMLRegularFace

    if similarity == "cosine":
        ours_reg = RegularFaceRegularizer()
        pml_reg = PMLRegularFace()
    else:
        ours_reg = RegularFaceRegularizer(distance=DotProductSimilarity(normalize_embeddings=False))
        pml_reg = PMLRegularFace(distance=pml_distances.DotProductSimilarity(normalize_embeddings=False))
    x = _x(5, n=12, d=6)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    a = ours_reg(ours)
    b = pml_reg(theirs)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_rows_give_zero_with_zero_gradient(n: int) -> None:
    x = _x(6, n=n).requires_grad_()
    out = RegularFaceRegularizer()(x)
    out.backward()
    assert out.item() == 0.0
    assert x.grad is not None and bool((x.grad == 0).all())


def test_custom_reducer_is_used() -> None:
    x = _x(7, n=9)
    values = regular_face_values(x.tolist())
    ordered = sorted(values)
    threshold = (ordered[3] + ordered[4]) / 2  # between two values, so rounding cannot move one across
    got = RegularFaceRegularizer(reducer=ThresholdReducer(low=threshold))(x)
    assert got.item() == pytest.approx(mean([v for v in values if v > threshold]), rel=1e-12)
    assert got.item() != pytest.approx(mean(values), rel=1e-6)


def test_distance_must_be_a_similarity() -> None:
    text = (
        "RegularFaceRegularizer: `distance` must be a similarity (is_inverted=True), e.g. CosineSimilarity(), "
        "got LpDistance(normalize_embeddings=True, p=2, power=1)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(text)}$"):
        RegularFaceRegularizer(distance=LpDistance())
