"""ContrastiveLoss against the float64 oracle in tests/reference/contrastive.py, autograd, edge cases and PML."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.contrastive import ContrastiveLoss
from dmlkit.reducers import BaseReducer, MeanReducer, MultipleReducers
from dmlkit.types import TermKind, Terms
from tests.losses.cases import PAIR_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import contrastive as ref
from tests.reference import distances as dref

# name -> (dmlkit factory, oracle matrix, is_similarity, (PML class name, kwargs))
DISTANCES = PAIR_LOSS_DISTANCES
# (pos_margin, neg_margin) that make sense for a distance / a similarity
MARGINS = {False: [(0.0, 1.0), (0.3, 0.9), (0.5, 1.6)], True: [(1.0, 0.0), (0.8, 0.2), (0.6, -0.1)]}
GRID = [(name, pm, nm) for name, spec in DISTANCES.items() for pm, nm in MARGINS[spec[2]]]


def _oracle(
    name: str,
    emb: Tensor,
    labels: Tensor,
    pm: float,
    nm: float,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: ref.Pairs | None = None,
) -> float:
    _, matrix, is_sim, _ = DISTANCES[name]
    mat = matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    if pairs is None:
        pairs = _label_pairs(labels, ref_labels)
    return ref.contrastive_loss(mat, pairs, is_sim, pm, nm)


def _label_pairs(labels: Tensor, ref_labels: Tensor | None = None) -> ref.Pairs:
    """Every positive and negative pair, by brute force (no self-pairs without a reference set)."""
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


def _pml(name: str, **kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, dkw = DISTANCES[name][3]
    return losses.ContrastiveLoss(distance=getattr(distances, cls_name)(**dkw), **kwargs)


class _Recorder(BaseReducer):
    """Keeps the groups it is given and sums their values."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Terms] = {}

    def forward(self, terms: Terms | Mapping[str, Terms], embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        assert not isinstance(terms, Terms)
        self.seen = dict(terms)
        return sum((t.values.sum() for t in terms.values()), embeddings.new_zeros(()))


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("name,pm,nm", GRID)
def test_matches_oracle(name: str, pm: float, nm: float) -> None:
    loss_fn = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(name, emb, labels, pm, nm), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", list(DISTANCES))
def test_matches_oracle_with_reference_set(name: str) -> None:
    pm, nm = MARGINS[DISTANCES[name][2]][1]
    loss_fn = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(name, emb, labels, pm, nm, ref_emb, ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", ["lp", "cosine"])
def test_matches_oracle_with_given_pairs_and_triplets(name: str) -> None:
    pm, nm = MARGINS[DISTANCES[name][2]][1]
    loss_fn = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())
    emb, labels = _batch(3, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    # a subset with repeats: a repeated pair counts once per listing
    pairs = (a1[::2] + a1[:2], p[::2] + p[:2], a2[::3] + a2[:1], n[::3] + n[:1])
    got = loss_fn(emb, labels, tuple(torch.tensor(x) for x in pairs))
    assert got.item() == pytest.approx(_oracle(name, emb, labels, pm, nm, pairs=pairs), rel=1e-10)
    # triplets contribute their (a, p) and (a, n) pairs, repeats included
    trip = [x[::5] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    got = loss_fn(emb, labels, tuple(trip))
    assert got.item() == pytest.approx(_oracle(name, emb, labels, pm, nm, pairs=tpairs), rel=1e-10)
    # labels are not needed when pairs are given
    assert loss_fn(emb, indices_tuple=tuple(trip)).item() == pytest.approx(got.item(), rel=1e-12)


def test_hand_computed() -> None:
    # 1-D raw Euclidean distances: positives (0, 1) at 0.4, (2, 3) at 2.0; negatives at 1.0, 1.4, 3.0, 2.6, ...
    emb = torch.tensor([[0.0], [0.4], [1.4], [3.4]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss_fn = ContrastiveLoss(pos_margin=0.5, neg_margin=1.5, distance=LpDistance(normalize_embeddings=False))
    # pos: relu(0.4 - 0.5) = 0 (x2), relu(2.0 - 0.5) = 1.5 (x2) -> non-zero mean 1.5
    # neg: d(0,2)=1.4 -> 0.1, d(1,2)=1.0 -> 0.5, d(0,3)=3.4 -> 0, d(1,3)=3.0 -> 0 (each twice) -> mean 0.3
    assert loss_fn(emb, labels).item() == pytest.approx(1.8, abs=1e-12)


def test_sub_losses_kinds_and_anchors() -> None:
    emb, labels = _batch(4, n=7)
    recorder = _Recorder()
    ContrastiveLoss(reducer=recorder)(emb, labels)
    a1, p, a2, n = _label_pairs(labels)
    assert list(recorder.seen) == ["pos_loss", "neg_loss"]
    pos, neg = recorder.seen["pos_loss"], recorder.seen["neg_loss"]
    assert pos.kind is TermKind.POS_PAIR and neg.kind is TermKind.NEG_PAIR
    assert pos.anchors.tolist() == a1 and neg.anchors.tolist() == a2
    mat = dref.lp_matrix(emb.tolist(), emb.tolist())
    expected_pos, expected_neg = ref.pair_losses(mat, (a1, p, a2, n), False, 0.0, 1.0)
    torch.testing.assert_close(pos.values, torch.tensor(expected_pos, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(neg.values, torch.tensor(expected_neg, dtype=torch.float64), rtol=0, atol=1e-12)


def test_multiple_reducers_by_sub_loss_name() -> None:
    emb, labels = _batch(5)
    loss_fn = ContrastiveLoss(reducer=MultipleReducers({"pos_loss": MeanReducer()}, default_reducer=MeanReducer()))
    mat = dref.lp_matrix(emb.tolist(), emb.tolist())
    pos, neg = ref.pair_losses(mat, _label_pairs(labels), False, 0.0, 1.0)
    assert loss_fn(emb, labels).item() == pytest.approx(ref.mean(pos) + ref.mean(neg), rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(DISTANCES))
def test_gradcheck_away_from_kinks(name: str) -> None:
    factory, matrix, is_sim, _ = DISTANCES[name]
    pm, nm = MARGINS[is_sim][1]
    for seed in range(100):
        emb, labels = _batch(seed, n=6, d=3, classes=2)
        mat = matrix(emb.tolist(), emb.tolist())
        a1, p, a2, n = _label_pairs(labels)
        kinks = [mat[i][j] - pm for i, j in zip(a1, p, strict=True)] + [
            mat[i][k] - nm for i, k in zip(a2, n, strict=True)
        ]
        if (
            a1
            and a2
            and min(abs(k) for k in kinks) > 1e-3
            and ref.contrastive_loss(mat, (a1, p, a2, n), is_sim, pm, nm)
        ):
            break
    else:
        pytest.fail("no random batch away from the hinge kinks")
    loss_fn = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=factory())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = ContrastiveLoss(pos_margin=0.2, neg_margin=1.9, reducer=MeanReducer())
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_one_class_pulls_positives_and_warns() -> None:
    emb = _batch(0)[0].requires_grad_()
    labels = torch.full((10,), 2)
    with pytest.warns(UserWarning, match=re.escape("ContrastiveLoss: every label in the batch is 2")):
        loss = ContrastiveLoss()(emb, labels)
    # no negative pair, but the positive pairs still have a loss
    assert loss.item() == pytest.approx(_oracle("lp", emb.detach(), labels, 0.0, 1.0), rel=1e-10)
    assert loss.item() > 0


def test_all_unique_labels_only_pushes_negatives() -> None:
    emb, _ = _batch(1)
    labels = torch.arange(10)
    recorder = _Recorder()
    ContrastiveLoss(reducer=recorder)(emb, labels)
    assert recorder.seen["pos_loss"].values.numel() == 0
    assert ContrastiveLoss(neg_margin=1.5)(emb, labels).item() == pytest.approx(
        _oracle("lp", emb, labels, 0.0, 1.5), rel=1e-10
    )


def test_no_pair_gives_zero_and_zero_gradient() -> None:
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="every label in the batch is 0"):
        loss = ContrastiveLoss()(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_empty_indices_tuple_gives_zero_and_zero_gradient() -> None:
    emb = _batch(2)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ContrastiveLoss()(emb, torch.arange(10) % 3, indices_tuple=(e, e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("name", list(DISTANCES))
def test_identical_embeddings_are_finite(name: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pm, nm = MARGINS[DISTANCES[name][2]][1]
    loss = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(_oracle(name, emb.detach(), labels, pm, nm), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("scale", [1e-8, 1e6])
@pytest.mark.parametrize("name", ["lp", "lp_raw", "cosine"])
def test_extreme_scales_stay_finite(scale: float, name: str) -> None:
    emb, labels = _batch(5, scale=scale)
    emb = emb.float().requires_grad_()
    pm, nm = MARGINS[DISTANCES[name][2]][0]
    loss = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


def test_reference_copy_of_batch_includes_self_pairs() -> None:
    emb, labels = _batch(6, n=6)
    loss_fn = ContrastiveLoss(pos_margin=0.1)
    with_copy = loss_fn(emb, labels, ref_emb=emb.clone(), ref_labels=labels.clone()).item()
    assert with_copy == pytest.approx(_oracle("lp", emb, labels, 0.1, 1.0, emb, labels.clone()), rel=1e-10)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg", ["pos_margin", "neg_margin"])
def test_error_margin_not_a_number(arg: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"ContrastiveLoss: `{arg}` must be a number, got '1'.")):
        ContrastiveLoss(**{arg: "1"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(f"ContrastiveLoss: `{arg}` must be a number, not NaN, got nan.")):
        ContrastiveLoss(**{arg: float("nan")})


def test_error_labels_required() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("ContrastiveLoss: `labels` must be given (or an `indices_tuple` from a miner), got None."),
    ):
        ContrastiveLoss()(torch.randn(4, 3))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("name,pm,nm", GRID)
def test_pml_parity(name: str, pm: float, nm: float) -> None:
    ours = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())
    theirs = _pml(name, pos_margin=pm, neg_margin=nm)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(DISTANCES))
def test_pml_parity_with_reference_set(name: str) -> None:
    pm, nm = MARGINS[DISTANCES[name][2]][1]
    ours = ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=DISTANCES[name][0]())
    theirs = _pml(name, pos_margin=pm, neg_margin=nm)
    for seed in range(4):
        emb, labels = _batch(seed, n=7)
        ref_emb, ref_labels = _batch(seed + 30, n=11)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-10,
        )


@pytest.mark.parametrize("miner", ["pairs", "triplets"])
def test_pml_parity_with_miner_output(miner: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    mine = (
        pml_miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.9)
        if miner == "pairs"
        else pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
    )
    ours, theirs = ContrastiveLoss(neg_margin=1.2), _pml("lp", neg_margin=1.2)
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        indices = mine(emb, labels)
        assert indices[0].numel() > 1
        torch.testing.assert_close(ours(emb, labels, indices), theirs(emb, labels, indices), rtol=0, atol=1e-10)


def test_pml_parity_with_multiple_reducers() -> None:
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    ours = ContrastiveLoss(reducer=MultipleReducers({"pos_loss": MeanReducer()}))
    theirs = _pml("lp", reducer=pml_reducers.MultipleReducers({"pos_loss": pml_reducers.MeanReducer()}))
    emb, labels = _batch(7, n=12)
    torch.testing.assert_close(ours(emb, labels), theirs(emb, labels), rtol=0, atol=1e-10)


def test_pml_difference_one_positive_and_one_negative_pair() -> None:
    # pytorch-metric-learning returns 0 whenever every pair list holds at most one pair; the loss of those
    # two pairs is not 0, and dmlkit returns it.
    emb, labels = _batch(8, n=4)
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    expected = _oracle("lp", emb, labels, 0.0, 2.0, pairs=tuple(x.tolist() for x in pairs))  # type: ignore[arg-type]
    assert expected > 0
    assert ContrastiveLoss(neg_margin=2.0)(emb, labels, pairs).item() == pytest.approx(expected, rel=1e-10)
    assert _pml("lp", neg_margin=2.0)(emb, labels, pairs).item() == 0.0


@pytest.mark.parametrize("reducer_name", ["AvgNonZeroReducer", "MeanReducer", "SumReducer"])
@pytest.mark.parametrize("distance", list(PAIR_LOSS_DISTANCES))
def test_masked_negative_reduction_equals_the_listed_path(reducer_name: str, distance: str) -> None:
    """The fused path (negative pairs reduced under their mask) against a reducer subclass, which lists them."""
    import dmlkit.reducers as reducers

    reducer_cls = getattr(reducers, reducer_name)
    listed_cls = type(f"Listed{reducer_name}", (reducer_cls,), {})
    emb, labels = _batch(8, n=16, classes=4)
    results = []
    for reducer in (reducer_cls(), listed_cls()):
        x = emb.clone().requires_grad_(True)
        loss_fn = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9, distance=PAIR_LOSS_DISTANCES[distance][0]())
        loss_fn.reducer = reducer
        value = loss_fn(x, labels)
        value.backward()
        results.append((value.detach(), x.grad))
    assert results[0][0].item() > 0
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("repeat", [False, True])
def test_many_mined_negative_pairs_reduced_under_a_mask_equal_the_listed_path(
    repeat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct mined negatives covering much of the matrix take the mask path; repeated ones stay listed."""
    import dmlkit.losses.contrastive as contrastive_module
    import dmlkit.reducers as reducers

    monkeypatch.setattr(contrastive_module, "MASK_FROM_CELLS", 1)  # the mask path from the smallest matrix on

    listed_cls = type("ListedAvgNonZeroReducer", (reducers.AvgNonZeroReducer,), {})
    emb, labels = _batch(9, n=16, classes=4)
    a1, p, a2, n = all_pairs(labels)
    keep = torch.arange(a2.numel()) % 4 != 0
    mined = (a1[::2], p[::2], a2[keep], n[keep])
    if repeat:
        mined = tuple(torch.cat([t, t[:3]]) for t in mined)
    results = []
    for reducer in (reducers.AvgNonZeroReducer(), listed_cls()):
        x = emb.clone().requires_grad_(True)
        value = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9, reducer=reducer)(x, labels, mined)
        value.backward()
        results.append((value.detach(), x.grad))
    assert results[0][0].item() > 0
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-13)
