"""LiftedStructureLoss against the float64 oracle in tests/reference/lifted_structure.py, autograd, edge cases,
errors and PML."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.lifted_structure import LiftedStructureLoss
from tests.losses.cases import PAIR_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import lifted_structure as ref

DISTANCES = PAIR_LOSS_DISTANCES
# (neg_margin, pos_margin) for a distance / a similarity
MARGINS = {False: [(1.0, 0.0), (0.5, 0.2), (2.0, 0.1)], True: [(0.0, 1.0), (0.3, 0.9), (-0.2, 0.5)]}
GRID = [(name, nm, pm) for name, spec in DISTANCES.items() for nm, pm in MARGINS[spec[2]]]


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


def _pml(name: str, **kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, dkw = DISTANCES[name][3]
    return losses.LiftedStructureLoss(distance=getattr(distances, cls_name)(**dkw), **kwargs)


def _tensors(pairs: tuple[list[int], ...]) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(x, dtype=torch.long) for x in pairs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("name,nm,pm", GRID)
def test_matches_oracle(name: str, nm: float, pm: float) -> None:
    loss_fn = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.lifted_structure_loss(_mat(name, emb), _pairs(labels), DISTANCES[name][2], nm, pm)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hand_computed() -> None:
    # 1-D raw distances. Points 0: 0.0, 1: 0.5 (class 0); 2: 1.0, 3: 3.0 (class 1); alpha = 1.
    # J_01 = log(e^(1-1) + e^(1-3) + e^(1-0.5) + e^(1-2.5)) + 0.5 = J_10
    # J_23 = log(e^(1-1) + e^(1-0.5) + e^(1-3) + e^(1-2.5)) + 2.0 = J_32
    emb = torch.tensor([[0.0], [0.5], [1.0], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    s = math.log(math.exp(0) + math.exp(-2) + math.exp(0.5) + math.exp(-1.5))
    expected = ((s + 0.5) ** 2 / 2 + (s + 2.0) ** 2 / 2) / 2
    loss_fn = LiftedStructureLoss(distance=LpDistance(normalize_embeddings=False))
    assert loss_fn(emb, labels).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_given_pairs_match_oracle(name: str) -> None:
    nm, pm = MARGINS[DISTANCES[name][2]][1]
    loss_fn = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    mat = _mat(name, emb)
    # a subset with repeated pairs (a repeated negative weighs twice in the sum, a repeated positive is
    # scored twice) and a positive pair (i, i) whose two ends share their negatives
    pairs = (a1[::2] + a1[:2] + [5], p[::2] + p[:2] + [5], a2[::3] + a2[:3], n[::3] + n[:3])
    got = loss_fn(emb, labels, _tensors(pairs))
    assert got.item() == pytest.approx(ref.lifted_structure_loss(mat, pairs, DISTANCES[name][2], nm, pm), rel=1e-10)
    # triplets contribute their (a, p) and (a, n) pairs, repeats included
    trip = [x[::4] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    got = loss_fn(emb, labels, tuple(trip))
    assert got.item() == pytest.approx(ref.lifted_structure_loss(mat, tpairs, DISTANCES[name][2], nm, pm), rel=1e-10)


def test_given_pairs_whose_ends_have_no_negative() -> None:
    emb, labels = _batch(5, n=9)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    anchors_with_neg = {a2[0]}
    pairs = (a1, p, [a2[0]], [n[0]])
    assert any(i not in anchors_with_neg and j not in anchors_with_neg for i, j in zip(a1, p, strict=True))
    expected = ref.lifted_structure_loss(_mat("lp", emb), pairs, False, 1.0, 0.0)
    assert LiftedStructureLoss()(emb, labels, _tensors(pairs)).item() == pytest.approx(expected, rel=1e-10)


def test_all_pairs_given_equal_labels_path() -> None:
    emb, labels = _batch(6, n=11)
    loss_fn = LiftedStructureLoss(neg_margin=0.7, pos_margin=0.1)
    torch.testing.assert_close(loss_fn(emb, labels, tuple(all_pairs(labels))), loss_fn(emb, labels), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_reference_set_uses_the_anchor_negatives(name: str) -> None:
    nm, pm = MARGINS[DISTANCES[name][2]][0]
    loss_fn = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 60, n=9)
        expected = ref.lifted_structure_loss(
            _mat(name, emb, ref_emb), _pairs(labels, ref_labels), DISTANCES[name][2], nm, pm, ref_is_batch=False
        )
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(DISTANCES))
def test_gradcheck(name: str) -> None:
    nm, pm = MARGINS[DISTANCES[name][2]][1]
    for seed in range(50):
        emb, labels = _batch(seed, n=6, d=3, classes=2)
        pairs = _pairs(labels)
        values = ref.lifted_structure_values(_mat(name, emb), pairs, DISTANCES[name][2], nm, pm)
        if pairs[0] and pairs[2] and any(v > 0 for v in values):
            break
    else:
        pytest.fail("no random batch with a positive loss")
    loss_fn = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_given_pairs_and_reference_set() -> None:
    emb, labels = _batch(2, n=5, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=6, d=3, classes=2)
    loss_fn = LiftedStructureLoss(neg_margin=1.5)
    pairs = _tensors(tuple(x[: max(1, len(x) // 2)] for x in _pairs(labels)))
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels, pairs), (emb.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_one_class_gives_zero_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("LiftedStructureLoss: every label in the batch is 1")):
        loss = LiftedStructureLoss()(emb, torch.ones(10, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_all_unique_labels_give_zero() -> None:
    emb = _batch(1)[0].requires_grad_()
    loss = LiftedStructureLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_empty_indices_tuple_gives_zero() -> None:
    emb = _batch(1)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    loss = LiftedStructureLoss()(emb, torch.arange(10) % 2, (e, e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("name", list(DISTANCES))
def test_identical_embeddings_are_finite(name: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    nm, pm = MARGINS[DISTANCES[name][2]][0]
    loss = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(emb.grad).all())
    expected = ref.lifted_structure_loss(_mat(name, emb.detach()), _pairs(labels), DISTANCES[name][2], nm, pm)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_huge_margin_stays_finite_and_exact(name: str) -> None:
    # J grows with the margin by exactly the margin's change when every pair has negatives
    is_sim = DISTANCES[name][2]
    emb, labels = _batch(7, n=12)
    emb = emb.requires_grad_()
    shift = 1000.0
    base = ref.lifted_structure_values(_mat(name, emb.detach()), _pairs(labels), is_sim, 0.0, 0.0)
    j0 = [math.sqrt(2 * v) for v in base]  # every J is positive here
    assert all(v > 0 for v in base)
    nm = -shift if is_sim else shift
    loss = LiftedStructureLoss(neg_margin=nm, distance=DISTANCES[name][0]())(emb, labels)
    loss.backward()
    expected = sum((j + shift) ** 2 / 2 for j in j0) / len(j0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg", ["neg_margin", "pos_margin"])
def test_error_margin_not_a_number(arg: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"LiftedStructureLoss: `{arg}` must be a number, got [1].")):
        LiftedStructureLoss(**{arg: [1]})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("name,nm,pm", GRID)
def test_pml_parity(name: str, nm: float, pm: float) -> None:
    ours = LiftedStructureLoss(neg_margin=nm, pos_margin=pm, distance=DISTANCES[name][0]())
    theirs = _pml(name, neg_margin=nm, pos_margin=pm)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("miner", ["pairs", "triplets"])
def test_pml_parity_with_miner_output(miner: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    mine = (
        pml_miners.PairMarginMiner(pos_margin=0.4, neg_margin=1.0)
        if miner == "pairs"
        else pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="all")
    )
    ours, theirs = LiftedStructureLoss(neg_margin=1.2), _pml("lp", neg_margin=1.2)
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        indices = mine(emb, labels)
        assert indices[0].numel() > 1
        torch.testing.assert_close(ours(emb, labels, indices), theirs(emb, labels, indices), rtol=0, atol=1e-10)


def test_pml_difference_with_reference_set() -> None:
    # pytorch-metric-learning adds, for a positive pair (i, j), the negative pairs anchored at the *query* whose
    # index equals j's *reference* index; dmlkit uses i's negatives only (j is not a query).
    emb, labels = _batch(8, n=6)
    ref_emb, ref_labels = _batch(9, n=9)
    ours = LiftedStructureLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    expected = ref.lifted_structure_loss(
        _mat("lp", emb, ref_emb), _pairs(labels, ref_labels), False, 1.0, 0.0, ref_is_batch=False
    )
    assert ours == pytest.approx(expected, rel=1e-10)
    theirs = _pml("lp")(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    assert theirs != pytest.approx(ours, rel=1e-6)
