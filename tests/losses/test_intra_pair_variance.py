"""IntraPairVarianceLoss against the float64 oracle in tests/reference/intra_pair_variance.py, autograd, edge
cases, errors and PML."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.intra_pair_variance import IntraPairVarianceLoss
from dmlkit.reducers import MultipleReducers, SumReducer
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as dref
from tests.reference import intra_pair_variance as ref

Oracle = Callable[[list, list], list]
DISTANCES: dict[str, tuple[Callable[[], BaseDistance], Oracle, bool, tuple[str, dict]]] = {
    "cosine": (CosineSimilarity, dref.cosine_matrix, True, ("CosineSimilarity", {})),
    "dot_raw": (
        lambda: DotProductSimilarity(normalize_embeddings=False),
        lambda q, r: dref.dot_matrix(q, r, normalize=False),
        True,
        ("DotProductSimilarity", {"normalize_embeddings": False}),
    ),
    "lp": (LpDistance, dref.lp_matrix, False, ("LpDistance", {})),
    "lp_squared": (
        lambda: LpDistance(power=2),
        lambda q, r: dref.lp_matrix(q, r, power=2),
        False,
        ("LpDistance", {"power": 2}),
    ),
}
EPS = [(0.01, 0.01), (0.0, 0.2), (0.3, 0.05)]
NAME = "IntraPairVarianceLoss"




def _pairs(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[list[int], ...]:
    lab = labels.tolist()
    other = lab if ref_labels is None else ref_labels.tolist()
    a1, p, a2, n = [], [], [], []
    for i, li in enumerate(lab):
        for j, lj in enumerate(other):
            if ref_labels is None and i == j:
                continue
            (a1 if li == lj else a2).append(i)
            (p if li == lj else n).append(j)
    return a1, p, a2, n


def _oracle(
    name: str, emb: Tensor, pairs: tuple[list[int], ...], pe: float, ne: float, ref_emb: Tensor | None = None
) -> float:
    mat = DISTANCES[name][1](emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    return ref.intra_pair_variance_loss(mat, pairs, DISTANCES[name][2], pe, ne)


def _pml(name: str, **kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, dkw = DISTANCES[name][3]
    return losses.IntraPairVarianceLoss(distance=getattr(distances, cls_name)(**dkw), **kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("name", list(DISTANCES))
@pytest.mark.parametrize("pe,ne", EPS)
def test_matches_oracle(name: str, pe: float, ne: float) -> None:
    loss_fn = IntraPairVarianceLoss(pos_eps=pe, neg_eps=ne, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(name, emb, _pairs(labels), pe, ne)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_reference_set() -> None:
    loss_fn = IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.1)
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 80, n=9)
        expected = _oracle("cosine", emb, _pairs(labels, ref_labels), 0.05, 0.1, ref_emb)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_given_pairs_and_triplets_match_oracle() -> None:
    loss_fn = IntraPairVarianceLoss()
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    # repeats count as listed, in the means too
    pairs = (a1[::2] + a1[:3], p[::2] + p[:3], a2[::3] + a2[:2], n[::3] + n[:2])
    got = loss_fn(emb, labels, tuple(torch.tensor(x) for x in pairs))
    assert got.item() == pytest.approx(_oracle("cosine", emb, pairs, 0.01, 0.01), rel=1e-10)
    trip = [x[::5] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    got = loss_fn(emb, labels, tuple(trip))
    assert got.item() == pytest.approx(_oracle("cosine", emb, tpairs, 0.01, 0.01), rel=1e-10)


def test_hand_computed() -> None:
    # raw dot products; positives 0.5 and 1.5 (each listed once): mean 1, threshold 0.9 -> (0.9 - 0.5)^2 / 2
    # negatives -1, 0, 1: mean 0, threshold 0 -> (1 - 0)^2 / 3
    emb = torch.tensor([[1.0], [0.5], [1.5], [-1.0], [0.0]], dtype=torch.float64)
    pairs = (torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0, 0, 0]), torch.tensor([3, 4, 0]))
    loss_fn = IntraPairVarianceLoss(pos_eps=0.1, neg_eps=0.5, distance=DotProductSimilarity(normalize_embeddings=False))
    assert loss_fn(emb, indices_tuple=pairs).item() == pytest.approx(0.4**2 / 2 + 1 / 3, abs=1e-12)


def test_sub_losses_reduced_separately() -> None:
    emb, labels = _batch(5)
    loss_fn = IntraPairVarianceLoss(reducer=MultipleReducers({"neg_loss": SumReducer()}))
    mat = dref.cosine_matrix(emb.tolist(), emb.tolist())
    a1, p, a2, n = _pairs(labels)
    pos_only = ref.intra_pair_variance_loss(mat, (a1, p, [], []))
    neg_only = ref.intra_pair_variance_loss(mat, ([], [], a2, n))
    assert loss_fn(emb, labels).item() == pytest.approx(pos_only + neg_only * len(a2), rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(DISTANCES))
def test_gradcheck(name: str) -> None:
    # the squared hinge is continuously differentiable, so no kink needs avoiding
    emb, labels = _batch(1, n=7, d=3, classes=2)
    loss_fn = IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.05, distance=DISTANCES[name][0]())
    assert loss_fn(emb, labels).item() > 0
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradient_matches_oracle_finite_differences() -> None:
    # the oracle recomputes the means at every point, so this checks that gradients flow through them
    emb, labels = _batch(2, n=8)
    x = emb.clone().requires_grad_()
    IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.05)(x, labels).backward()
    assert x.grad is not None
    pairs, h = _pairs(labels), 1e-6
    for i, k in [(0, 0), (3, 2), (7, 1)]:
        up, down = emb.clone(), emb.clone()
        up[i, k] += h
        down[i, k] -= h
        numeric = (_oracle("cosine", up, pairs, 0.05, 0.05) - _oracle("cosine", down, pairs, 0.05, 0.05)) / (2 * h)
        assert x.grad[i, k].item() == pytest.approx(numeric, abs=1e-7)


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = IntraPairVarianceLoss(pos_eps=0.1, neg_eps=0.1)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_one_class_keeps_the_positive_term_and_warns() -> None:
    emb, _ = _batch(0)
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.warns(UserWarning, match=re.escape(f"{NAME}: every label in the batch is 0")):
        loss = IntraPairVarianceLoss()(emb, labels)
    assert loss.item() == pytest.approx(_oracle("cosine", emb, _pairs(labels), 0.01, 0.01), rel=1e-10)


def test_single_pair_of_each_kind_gives_zero() -> None:
    # a single value always equals its mean, so (1 - eps) * mu - s = -eps * s
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    loss = IntraPairVarianceLoss()(emb, indices_tuple=pairs)
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_no_pair_gives_zero_and_zero_gradient() -> None:
    emb = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning):
        loss = IntraPairVarianceLoss()(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_identical_embeddings_give_zero_and_finite_gradient() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    loss = IntraPairVarianceLoss()(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert loss.item() == 0.0 and bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(6, scale=scale)
    emb = emb.float().requires_grad_()
    loss = IntraPairVarianceLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg", ["pos_eps", "neg_eps"])
def test_error_negative_eps(arg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{NAME}: `{arg}` must be a number >= 0, got -0.01.")):
        IntraPairVarianceLoss(**{arg: -0.01})


def test_default_distance_is_cosine() -> None:
    assert isinstance(IntraPairVarianceLoss().distance, CosineSimilarity)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("name", list(DISTANCES))
@pytest.mark.parametrize("pe,ne", EPS)
def test_pml_parity(name: str, pe: float, ne: float) -> None:
    ours = IntraPairVarianceLoss(pos_eps=pe, neg_eps=ne, distance=DISTANCES[name][0]())
    theirs = _pml(name, pos_eps=pe, neg_eps=ne)
    for seed in range(3):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


def test_pml_parity_with_reference_set_and_miners() -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    ours, theirs = IntraPairVarianceLoss(), _pml("cosine")
    miners = [pml_miners.PairMarginMiner(pos_margin=0.4, neg_margin=1.0), pml_miners.TripletMarginMiner(margin=0.3)]
    for seed in range(3):
        emb, labels = _batch(seed, n=12, classes=4)
        ref_emb, ref_labels = _batch(seed + 10, n=15, classes=4)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-10,
        )
        for miner in miners:
            mined = miner(emb, labels)
            assert mined[0].numel() > 1
            torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined), rtol=0, atol=1e-10)


@pytest.mark.parametrize("reducer_name", ["AvgNonZeroReducer", "MeanReducer", "SumReducer"])
@pytest.mark.parametrize("cells", [16, 1 << 22])  # several checkpointed row blocks, or one
def test_masked_negative_reduction_equals_the_listed_path(
    monkeypatch: pytest.MonkeyPatch, reducer_name: str, cells: int
) -> None:
    """The fused path (negatives reduced under their mask, mean included) against a listing reducer subclass."""
    import dmlkit.reducers as reducers

    monkeypatch.setattr("dmlkit.losses.intra_pair_variance.BLOCK_CELLS", cells)
    reducer_cls = getattr(reducers, reducer_name)
    listed_cls = type(f"Listed{reducer_name}", (reducer_cls,), {})
    g = torch.Generator().manual_seed(12)
    emb, labels = torch.randn(18, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (18,), generator=g)
    results = []
    for reducer in (reducer_cls(), listed_cls()):
        x = emb.clone().requires_grad_(True)
        value = IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.05, reducer=reducer)(x, labels)
        value.backward()
        results.append((value.detach(), x.grad))
    assert results[0][0].item() > 0
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-13)
    x = emb.clone().requires_grad_(True)
    loss_fn = IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.05, reducer=reducer_cls())
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (x,))
