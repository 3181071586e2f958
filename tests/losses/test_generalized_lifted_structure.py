"""GeneralizedLiftedStructureLoss against the float64 oracle in tests/reference/generalized_lifted_structure.py,
autograd, edge cases, errors and PML."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.generalized_lifted_structure import GeneralizedLiftedStructureLoss
from dmlkit.reducers import BaseReducer
from dmlkit.types import TermKind, Terms
from tests.losses.cases import PAIR_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import generalized_lifted_structure as ref

DISTANCES = PAIR_LOSS_DISTANCES
MARGINS = {False: [(1.0, 0.0), (0.5, 0.2), (3.0, 0.1)], True: [(0.0, 1.0), (0.3, 0.9), (-0.5, 0.5)]}
GRID = [(name, nm, pm) for name, spec in DISTANCES.items() for nm, pm in MARGINS[spec[2]]]
NAME = "GeneralizedLiftedStructureLoss"


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


def _mat(name: str, emb: Tensor, ref_emb: Tensor | None = None) -> list[list[float]]:
    return DISTANCES[name][1](emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())


def _oracle(
    name: str, emb: Tensor, pairs: tuple[list[int], ...], nm: float, pm: float, ref_emb: Tensor | None = None
) -> float:
    return ref.generalized_lifted_structure_loss(_mat(name, emb, ref_emb), pairs, DISTANCES[name][2], nm, pm)


def _pml(name: str, **kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, dkw = DISTANCES[name][3]
    return losses.GeneralizedLiftedStructureLoss(distance=getattr(distances, cls_name)(**dkw), **kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("name,nm,pm", GRID)
def test_matches_oracle(name: str, nm: float, pm: float) -> None:
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(name, emb, _pairs(labels), nm, pm)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_matches_oracle_with_reference_set(name: str) -> None:
    nm, pm = MARGINS[DISTANCES[name][2]][2]
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=5)
        ref_emb, ref_labels = _batch(seed + 70, n=9)
        expected = _oracle(name, emb, _pairs(labels, ref_labels), nm, pm, ref_emb)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_given_pairs_and_triplets_match_oracle() -> None:
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=2.0)
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    # repeats count once: the per-anchor sets are what the loss sees
    pairs = (a1[::2] + a1[:3], p[::2] + p[:3], a2[::3] + a2[:2], n[::3] + n[:2])
    got = loss_fn(emb, labels, tuple(torch.tensor(x) for x in pairs))
    assert got.item() == pytest.approx(_oracle("lp", emb, pairs, 2.0, 0.0), rel=1e-10)
    trip = [x[::6] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    assert loss_fn(emb, labels, tuple(trip)).item() == pytest.approx(_oracle("lp", emb, tpairs, 2.0, 0.0), rel=1e-10)


def test_hand_computed() -> None:
    # 1-D raw distances. 0: 0.0, 1: 0.5 (class 0); 2: 1.0 (class 1). alpha = 2.
    # anchor 0: log e^0.5 + log(e^(2-1)) = 1.5; anchor 1: 0.5 + log e^(2-0.5) = 2.0;
    # anchor 2: no positive (0) + log(e^(2-1) + e^(2-0.5)) ; mean over the three anchors
    emb = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    third = math.log(math.exp(1.0) + math.exp(1.5))
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=2.0, distance=LpDistance(normalize_embeddings=False))
    assert loss_fn(emb, labels).item() == pytest.approx((1.5 + 2.0 + third) / 3, abs=1e-12)


def test_terms_are_one_per_query_element() -> None:
    emb, labels = _batch(5, n=7)
    seen: dict[str, Terms] = {}

    class Keep(BaseReducer):
        def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
            seen["terms"] = terms
            return terms.values.sum()

    GeneralizedLiftedStructureLoss(reducer=Keep())(emb, labels)
    terms = seen["terms"]
    assert terms.kind is TermKind.ELEMENT and terms.anchors.tolist() == list(range(7))
    expected = [max(0.0, v) for v in ref.anchor_values(_mat("lp", emb), _pairs(labels))]
    torch.testing.assert_close(terms.values, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(DISTANCES))
def test_gradcheck_away_from_the_hinge(name: str) -> None:
    nm, pm = MARGINS[DISTANCES[name][2]][2]
    for seed in range(50):
        emb, labels = _batch(seed, n=6, d=3, classes=2)
        values = ref.anchor_values(_mat(name, emb), _pairs(labels), DISTANCES[name][2], nm, pm)
        if all(abs(v) > 1e-3 for v in values) and any(v > 0 for v in values):
            break
    else:
        pytest.fail("no random batch away from the hinge")
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = GeneralizedLiftedStructureLoss(neg_margin=4.0)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_one_class_gives_zero_with_a_warning_and_zero_gradient_when_satisfied() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape(f"{NAME}: every label in the batch is 3")):
        loss = GeneralizedLiftedStructureLoss(pos_margin=5.0)(emb, torch.full((10,), 3))
    loss.backward()
    # positives only: log-sum-exp of (d - 5) < 0 for normalised embeddings, so the hinge is 0
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_all_unique_labels_use_the_negative_term() -> None:
    emb, _ = _batch(1)
    labels = torch.arange(10)
    expected = _oracle("lp", emb, _pairs(labels), 3.0, 0.0)
    assert expected > 0
    assert GeneralizedLiftedStructureLoss(neg_margin=3.0)(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_empty_indices_tuple_gives_zero() -> None:
    emb = _batch(1)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    loss = GeneralizedLiftedStructureLoss()(emb, torch.arange(10) % 2, (e, e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("name", list(DISTANCES))
def test_identical_embeddings_are_finite(name: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    nm, pm = MARGINS[DISTANCES[name][2]][0]
    loss = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(_oracle(name, emb.detach(), _pairs(labels), nm, pm), rel=1e-10)


def test_huge_margins_stay_finite() -> None:
    emb, labels = _batch(7, n=12)
    emb = emb.float().requires_grad_()
    loss = GeneralizedLiftedStructureLoss(neg_margin=1e4, pos_margin=-1e4)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # both log-sum-exps move by exactly the margins
    base = _oracle("lp", emb.detach().double(), _pairs(labels), 0.0, 0.0)
    assert loss.item() == pytest.approx(base + 2e4, rel=1e-6)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg", ["neg_margin", "pos_margin"])
def test_error_margin_not_a_number(arg: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"{NAME}: `{arg}` must be a number, got '0.5'.")):
        GeneralizedLiftedStructureLoss(**{arg: "0.5"})  # type: ignore[arg-type]


def test_error_pair_both_positive_and_negative() -> None:
    emb, labels = _batch(0)
    pairs = (torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([1, 3]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{NAME}: `indices_tuple` must be pairs that are either positive or negative, not both, "
            "got 1 pair(s) listed as both."
        ),
    ):
        GeneralizedLiftedStructureLoss()(emb, labels, pairs)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("name,nm,pm", GRID)
def test_pml_parity(name: str, nm: float, pm: float) -> None:
    ours = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    theirs = _pml(name, neg_margin=nm, pos_margin=pm)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_pml_parity_with_reference_set_and_miners(name: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    nm, pm = MARGINS[DISTANCES[name][2]][1]
    ours = GeneralizedLiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    theirs = _pml(name, neg_margin=nm, pos_margin=pm)
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
