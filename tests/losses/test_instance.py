"""InstanceLoss against the float64 oracle in tests/reference/instance.py, autograd, edge cases and
pytorch-metric-learning."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.losses.instance import InstanceLoss
from dmlkit.reducers import SumReducer
from tests.reference import distances as ref_dist
from tests.reference import instance as ref

GAMMAS = [1.0, 8.0, 64.0]


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 4, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _oracle(emb: Tensor, labels: Tensor | None, gamma: float) -> float:
    cos = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    return ref.instance_loss(cos, None if labels is None else labels.tolist(), gamma)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("label_kind", ["none", "unique", "arange", "repeated"])
def test_matches_oracle(gamma: float, label_kind: str) -> None:
    loss_fn = InstanceLoss(gamma=gamma)
    for seed in range(3):
        emb, labels = _batch(seed)
        chosen = {
            "none": None,
            "unique": torch.randperm(10, generator=torch.Generator().manual_seed(seed)) * 3 + 1,
            "arange": torch.arange(10),
            "repeated": labels,
        }[label_kind]
        expected = _oracle(emb, chosen, gamma)
        assert loss_fn(emb, chosen).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_without_labels_every_sample_is_its_own_instance() -> None:
    emb, _ = _batch(4)
    cos = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    total = 0.0
    for i in range(10):
        total += -math.log(math.exp(4 * cos[i][i]) / sum(math.exp(4 * c) for c in cos[i]))
    assert InstanceLoss(gamma=4)(emb).item() == pytest.approx(total / 10, rel=1e-12)
    assert InstanceLoss(gamma=4)(emb, torch.arange(10)).item() == pytest.approx(total / 10, rel=1e-12)


def test_target_is_the_rank_of_the_label() -> None:
    emb, _ = _batch(5, n=4)
    labels = torch.tensor([30, 10, 20, 10])  # ranks 2, 0, 1, 0
    cos = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    values = [math.log(sum(math.exp(2 * c) for c in cos[i])) - 2 * cos[i][t] for i, t in enumerate([2, 0, 1, 0])]
    assert InstanceLoss(gamma=2, reducer=SumReducer())(emb, labels).item() == pytest.approx(sum(values), rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("with_labels", [False, True])
def test_gradcheck(with_labels: bool) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=3)
    loss_fn = InstanceLoss(gamma=3)
    chosen = labels if with_labels else None
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, chosen), (emb.requires_grad_(),))


# --------------------------------------------------------------------------------------------- edge cases


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    loss = InstanceLoss()(emb)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(math.log(6), rel=1e-12)


def test_single_sample_gives_zero() -> None:
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    loss = InstanceLoss()(emb, torch.tensor([5]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("gamma", [1e-4, 1e4])
def test_extreme_gamma_stays_finite_in_float32(gamma: float) -> None:
    emb, labels = _batch(6)
    emb32 = emb.float().requires_grad_()
    loss = InstanceLoss(gamma=gamma)(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    assert loss.item() == pytest.approx(_oracle(emb, labels, gamma), rel=1e-3)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("distance", [LpDistance, DotProductSimilarity])
def test_error_distance_must_be_cosine(distance: type) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(f"InstanceLoss: `distance` must be a CosineSimilarity, got '{distance.__name__}'."),
    ):
        InstanceLoss(distance=distance())


def test_cosine_subclass_is_accepted() -> None:
    class MyCosine(CosineSimilarity):
        pass

    assert isinstance(InstanceLoss(distance=MyCosine()).distance, MyCosine)


@pytest.mark.parametrize("bad", [0, -2.0])
def test_error_gamma(bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"InstanceLoss: `gamma` must be a number > 0, got {bad!r}.")):
        InstanceLoss(gamma=bad)


def test_error_indices_tuple_not_supported() -> None:
    emb, labels = _batch(0)
    i = torch.tensor([0])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "InstanceLoss: `indices_tuple` must be None (the loss scores every sample against the whole batch), "
            "got 'a 3-tuple'."
        ),
    ):
        InstanceLoss()(emb, labels, (i, i + 1, i + 2))


def test_error_reference_set_not_supported() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "InstanceLoss: `ref_emb` must be None: this loss does not support a reference set, got 'a tensor'."
        ),
    ):
        InstanceLoss()(emb, labels, ref_emb=emb, ref_labels=labels)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("label_kind", ["arange", "repeated", "sparse"])
def test_pml_parity(gamma: float, label_kind: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed, n=12, d=5)
        chosen = {"arange": torch.arange(12), "repeated": labels, "sparse": labels * 7 + 3}[label_kind]
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = InstanceLoss(gamma=gamma)(x1, chosen), pml_losses.InstanceLoss(gamma=gamma)(x2, chosen)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_labels_are_optional_unlike_pml() -> None:
    # pytorch-metric-learning requires labels; dmlkit treats a call without labels as labels 0..N-1
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, _ = _batch(9)
    with pytest.raises(ValueError):
        pml_losses.InstanceLoss()(emb)
    torch.testing.assert_close(InstanceLoss()(emb), pml_losses.InstanceLoss()(emb, torch.arange(10)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("reducer_name", ["MeanReducer", "SumReducer"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_fused_cross_entropy_equals_the_per_term_path(
    reducer_name: str, with_labels: bool
) -> None:
    """The hand-written backward against a reducer subclass, which takes the per-term autograd path."""
    import dmlkit.reducers as reducers

    reducer_cls = getattr(reducers, reducer_name)
    listed_cls = type(f"Listed{reducer_name}", (reducer_cls,), {})
    emb, labels = _batch(3, n=12, d=5, classes=4)
    results = []
    for reducer in (reducer_cls(), listed_cls()):
        x = emb.clone().requires_grad_(True)
        value = InstanceLoss(gamma=5, reducer=reducer)(x, labels if with_labels else None)
        value.backward()
        results.append((value.detach(), x.grad))
    assert results[0][0].item() > 0
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-13)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: InstanceLoss(gamma=3, reducer=reducer_cls())(x), (emb,))


@pytest.mark.parametrize("label_kind", ["none", "repeated"])
@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_tiled_path_equals_the_oracle_and_the_dense_gradient(label_kind: str, block: int) -> None:
    emb, labels = _batch(8, n=13, d=5, classes=4)
    chosen = None if label_kind == "none" else labels
    dense_x, tiled_x = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    dense = InstanceLoss(gamma=6, chunk_size=0)(dense_x, chosen)
    tiled = InstanceLoss(gamma=6, chunk_size=block)(tiled_x, chosen)
    assert tiled.item() == pytest.approx(_oracle(emb, chosen, 6), rel=1e-10)
    dense.backward()
    tiled.backward()
    torch.testing.assert_close(tiled_x.grad, dense_x.grad, rtol=0, atol=1e-10)


def test_tiled_path_gradcheck_and_any_reducer() -> None:
    from dmlkit.reducers import ThresholdReducer

    emb, labels = _batch(9, n=7, d=3)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: InstanceLoss(gamma=3, chunk_size=3)(x, labels), (emb,))
    reducer = ThresholdReducer(low=0.5)
    expected = InstanceLoss(gamma=3, chunk_size=0, reducer=reducer)(emb, labels)
    torch.testing.assert_close(InstanceLoss(gamma=3, chunk_size=2, reducer=reducer)(emb, labels), expected)


def test_chunk_size_is_validated() -> None:
    with pytest.raises(ValueError, match=re.escape("InstanceLoss: `chunk_size` must be an integer >= 0, got -1.")):
        InstanceLoss(chunk_size=-1)
