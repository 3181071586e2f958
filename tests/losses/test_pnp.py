"""PNPLoss against the float64 oracle in tests/reference/pnp.py, autograd, edge cases and PML."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import Tensor

import dmlkit.losses.smooth_ap as smooth_ap_module
from dmlkit.distances import LpDistance
from dmlkit.losses.pnp import PNPLoss, PNPVariant
from dmlkit.miners import TripletMarginMiner
from tests.reference import pnp as ref

VARIANTS = ["O", "Ds", "Dq", "Iu", "Ib"]
OPTIONS = [{}, {"anneal": 0.3, "b": 3.0, "alpha": 2.0}]


def _batch(seed: int, n: int = 12, d: int = 5, classes: int = 4, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle(variant: str, options: dict) -> None:
    loss_fn = PNPLoss(variant=variant, **options)
    for seed in range(3):
        emb, labels = _batch(seed)
        labels[0] = 50  # a singleton: no positive, not its own positive either
        expected = ref.pnp_loss(emb, labels, variant, **options)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_o_variant() -> None:
    # query 0: similarities to itself 1, to its positive 0.6, to the negative 0.8 (anneal 0.5)
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])

    def g(x: float) -> float:
        return float(torch.sigmoid(torch.tensor(x / 0.5, dtype=torch.float64)))

    # queries 0 and 1 have a positive (each other) and are their own positives; query 2 has none
    q0 = (g(0.8 - 1.0) + g(0.8 - 0.6)) / 2
    q1 = (g(0.96 - 1.0) + g(0.96 - 0.6)) / 2  # query 1: itself 1, item 0 at 0.6, negative item 2 at 0.96
    assert PNPLoss(anneal=0.5)(emb, labels).item() == pytest.approx((q0 + q1) / 2, rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_set(variant: str) -> None:
    emb, labels = _batch(4, n=5)
    ref_emb, ref_labels = _batch(5, n=14)
    expected = ref.pnp_loss(emb, labels, variant, anneal=0.2, ref_emb=ref_emb, ref_labels=ref_labels)
    got = PNPLoss(variant=variant, anneal=0.2)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("variant", ["O", "Dq"])
def test_miner_pairs_are_the_sets(variant: str) -> None:
    emb, labels = _batch(6, n=14)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    pairs = [t.tolist() for t in (triplets[0], triplets[1], triplets[0], triplets[2])]
    expected = ref.pnp_loss(emb, None, variant, anneal=0.1, pairs=pairs)
    assert PNPLoss(variant=variant, anneal=0.1)(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    # labels are not needed with a miner's output
    assert PNPLoss(variant=variant, anneal=0.1)(emb, indices_tuple=triplets).item() == pytest.approx(
        expected, rel=1e-10
    )


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant: str) -> None:
    emb, labels = _batch(7, n=7, d=3, classes=3)
    loss_fn = PNPLoss(variant=variant, anneal=0.3)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set_and_miner() -> None:
    emb, labels = _batch(8, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(9, n=6, d=3, classes=2)
    loss_fn = PNPLoss(variant="Ib", anneal=0.3)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )
    emb, labels = _batch(10, n=7, d=3, classes=3)
    triplets = tuple(TripletMarginMiner(margin=1.0)(emb, labels))
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels, triplets), (emb.requires_grad_(),))


def test_blocked_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(11, n=10, classes=3)
    x1 = emb.clone().requires_grad_()
    one = PNPLoss(variant="Ds", anneal=0.1)(x1, labels)
    one.backward()
    monkeypatch.setattr(smooth_ap_module, "_BLOCK_ELEMENTS", 25)  # blocks of 2 or 3 pairs
    x2 = emb.clone().requires_grad_()
    blocked = PNPLoss(variant="Ds", anneal=0.1)(x2, labels)
    blocked.backward()
    assert blocked.item() == pytest.approx(one.item(), rel=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------- edge cases


def test_all_unique_labels_give_zero_and_zero_gradient() -> None:
    emb = _batch(12)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = PNPLoss()(emb, torch.arange(12))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_class_has_no_negative_before_any_positive(variant: str) -> None:
    emb = _batch(13)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("PNPLoss: every label in the batch is 0")):
        loss = PNPLoss(variant=variant)(emb, torch.zeros(12, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert emb.grad.abs().max().item() < 1e-12


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = PNPLoss()(emb, labels)
    loss.backward()
    # every difference is 0: each positive has its 4 negatives half ranked before it
    assert loss.item() == pytest.approx(2.0, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("anneal", [1e-6, 100.0])
@pytest.mark.parametrize("variant", VARIANTS)
def test_extreme_annealing_stays_finite(anneal: float, variant: str) -> None:
    emb, labels = _batch(14)
    emb = emb.float().requires_grad_()
    loss = PNPLoss(variant=variant, anneal=anneal)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- options and errors


def test_variant_accepts_enum_and_string() -> None:
    assert PNPLoss(variant=PNPVariant.DQ).variant is PNPVariant.DQ
    assert PNPLoss(variant="Iu").variant is PNPVariant.IU
    assert PNPLoss().variant == "O"


def test_error_variant_typo_lists_valid_values() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("PNPLoss: `variant` must be one of 'Ds', 'Dq', 'Iu', 'Ib', 'O', got 'Dqq'. Did you mean 'Dq'?"),
    ):
        PNPLoss(variant="Dqq")


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"b": 0}, "PNPLoss: `b` must be a number > 0, got 0."),
        ({"alpha": -1}, "PNPLoss: `alpha` must be a number > 0, got -1."),
        ({"anneal": 0.0}, "PNPLoss: `anneal` must be a number > 0, got 0.0."),
    ],
)
def test_error_parameters(kwargs: dict, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        PNPLoss(**kwargs)


def test_error_distance() -> None:
    with pytest.raises(TypeError, match=re.escape("PNPLoss: `distance` must be a CosineSimilarity, got 'LpDistance'.")):
        PNPLoss(distance=LpDistance())


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("options", OPTIONS)
def test_pml_parity(variant: str, options: dict) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(2):
        emb, labels = _batch(seed + 20, n=14)
        labels[0] = 50
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a = PNPLoss(variant=variant, **options)(x1, labels)
        b = pml_losses.PNPLoss(variant=variant, **options)(x2, labels)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-10)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-10)


def test_pml_rejects_miners_and_reference_sets() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(30)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        pml_losses.PNPLoss()(emb, labels, triplets)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml_losses.PNPLoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels.clone())
