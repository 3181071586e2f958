"""AngularLoss against the float64 oracle in tests/reference/angular.py, autograd, edge cases and PML."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.indices import all_pairs
from dmlkit.losses import angular as angular_module
from dmlkit.losses.angular import AngularLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import SumReducer
from tests.reference import angular as ref


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 3, unit: bool = False) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return (F.normalize(emb, dim=1) if unit else emb), labels


def _pairs_of(t: tuple[Tensor, ...]) -> list[tuple[int, int]]:
    return list(zip(t[0].tolist(), t[1].tolist(), strict=True))


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("alpha", [0, 20, 40, 55, 80])
def test_matches_oracle(alpha: float) -> None:
    loss_fn = AngularLoss(alpha=alpha)
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.angular_loss(emb, labels, alpha)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("alpha", [30, 45])
def test_matches_oracle_with_reference_set(alpha: float) -> None:
    loss_fn = AngularLoss(alpha=alpha)
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = ref.angular_loss(emb, labels, alpha, ref_emb=ref_emb, ref_labels=ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_oracle_sanity_hand_computed() -> None:
    # unit vectors at 0 and 90 degrees: x_a = x_p = e1, x_n = e2 -> f = 4t * 0 - 2(1 + t) * 1
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    t = 1.0  # alpha = 45 degrees
    expected = torch.log1p(torch.exp(torch.tensor(-2 * (1 + t), dtype=torch.float64))).item()
    assert ref.angular_loss(emb, labels, 45) == pytest.approx(expected, rel=1e-12)
    # pairs (0, 1) and (1, 0) have the same value; the negative's own pairs have no positive
    assert AngularLoss(alpha=45)(emb, labels).item() == pytest.approx(expected, rel=1e-12)


def test_reducer_sees_one_value_per_positive_pair() -> None:
    emb, labels = _batch(4)
    values = ref.angular_pair_values(emb, labels, 40)
    got = AngularLoss(reducer=SumReducer())(emb, labels)
    assert got.item() == pytest.approx(sum(values), rel=1e-10)


@pytest.mark.parametrize("alpha", [89.0, 89.99])
def test_large_alpha_is_finite_and_exact(alpha: float) -> None:
    emb, labels = _batch(5)
    emb.requires_grad_()
    loss = AngularLoss(alpha=alpha)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(ref.angular_loss(emb.detach(), labels, alpha), rel=1e-10)
    # float32 at the same angle stays finite too
    emb32 = emb.detach().float().requires_grad_()
    loss32 = AngularLoss(alpha=alpha)(emb32, labels)
    loss32.backward()
    assert bool(torch.isfinite(loss32)) and bool(torch.isfinite(emb32.grad).all())


def test_scale_invariant_including_negatives() -> None:
    emb, labels = _batch(6)
    scaled = emb * torch.linspace(0.1, 10.0, emb.shape[0], dtype=torch.float64).unsqueeze(1)
    loss_fn = AngularLoss()
    assert loss_fn(scaled, labels).item() == pytest.approx(loss_fn(emb, labels).item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("alpha", [10, 40, 70])
def test_gradcheck(alpha: float) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = AngularLoss(alpha=alpha)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = AngularLoss()
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


def test_gradcheck_with_miner_triplets() -> None:
    emb, labels = _batch(3, n=6, d=3, classes=2)
    triplets = (torch.tensor([0, 0, 1, 0]), torch.tensor([1, 1, 0, 1]), torch.tensor([2, 3, 2, 2]))
    a, p = triplets[0], triplets[1]
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[triplets[2]]).all())
    loss_fn = AngularLoss()
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels, triplets), (emb.requires_grad_(),))


# --------------------------------------------------------------------------------------------- blocked log-sum-exp


def _plain_log1p_sum_exp_rows(
    centres: Tensor, bias: Tensor, ref_rows: Tensor, scale: float, row_labels: Tensor, ref_labels: Tensor
) -> Tensor:
    """The plain autograd expression that the blocked function replaces."""
    logits = scale * centres @ ref_rows.T + bias.unsqueeze(1)
    logits = logits.masked_fill(row_labels.unsqueeze(1) == ref_labels.unsqueeze(0), float("-inf"))
    zeros = logits.new_zeros(logits.shape[0], 1)
    return torch.logsumexp(torch.cat([logits, zeros], dim=1), dim=1)


@pytest.mark.parametrize("chunk_elements", [1, 7, 1 << 22])
def test_blocked_log_sum_exp_equals_plain_expression(chunk_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(angular_module, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(9, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(9, generator=g, dtype=torch.float64)
    ref_rows = torch.randn(6, 4, generator=g, dtype=torch.float64)
    row_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1])
    ref_labels = torch.tensor([0, 1, 1, 2, 0, 2])  # label 3 has no match: those rows keep every column
    # and a row whose every column matches its label: nothing kept, value log(1) = 0
    ref_labels_one_class = torch.zeros(6, dtype=torch.long)
    upstream = torch.randn(9, generator=g, dtype=torch.float64)
    for labels_of_ref in (ref_labels, ref_labels_one_class):
        results = []
        for fn in (angular_module._log1p_sum_exp_rows, _plain_log1p_sum_exp_rows):
            inputs = [t.clone().requires_grad_() for t in (centres, bias, ref_rows)]
            out = fn(inputs[0], inputs[1], inputs[2], 3.0, row_labels, labels_of_ref)
            (out * upstream).sum().backward()
            results.append((out, *(t.grad for t in inputs)))
        for ours, plain in zip(*results, strict=True):
            torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)


def test_gradcheck_blocked_log_sum_exp_with_one_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(angular_module, "_CHUNK_ELEMENTS", 1)
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = AngularLoss(alpha=50)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


@pytest.mark.parametrize("num_pairs", [5, 400])  # few pairs: sorted keys; many: a mark per matrix cell
def test_distinct_pairs(num_pairs: int) -> None:
    g = torch.Generator().manual_seed(num_pairs)
    a = torch.randint(0, 6, (num_pairs,), generator=g)
    p = torch.randint(0, 7, (num_pairs,), generator=g)
    a_u, p_u, inverse = angular_module._distinct_pairs(a, p, 6, 7)
    pairs = list(zip(a_u.tolist(), p_u.tolist(), strict=True))
    assert pairs == sorted(set(zip(a.tolist(), p.tolist(), strict=True)))
    assert torch.equal(a_u[inverse], a) and torch.equal(p_u[inverse], p)


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = AngularLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    assert emb.grad is not None and bool((emb.grad == 0).all())


def test_single_class_gives_zero_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("AngularLoss: every label in the batch is 2")):
        loss = AngularLoss()(emb, torch.full((10,), 2))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_anchor_without_negative_in_reference_contributes_zero() -> None:
    # the reference holds only class 0 and 1; anchors of class 0 have negatives, the class-1 anchor has none
    emb, _ = _batch(7, n=3)
    labels = torch.tensor([0, 0, 1])
    ref_emb, _ = _batch(8, n=4)
    ref_labels = torch.tensor([0, 0, 1, 1])
    values = ref.angular_pair_values(emb, labels, 40, ref_emb=ref_emb, ref_labels=ref_labels)
    x = emb.clone().requires_grad_()
    got = AngularLoss(reducer=SumReducer())(x, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    got.backward()
    assert got.item() == pytest.approx(sum(values), rel=1e-10)
    assert bool(torch.isfinite(x.grad).all())
    # with a reference of one class only, some anchors have positives but no anchor has a negative of its own
    only_zero = torch.zeros(4, dtype=torch.long)
    y = emb.clone().requires_grad_()
    loss = AngularLoss()(y, labels, ref_emb=ref_emb, ref_labels=only_zero)
    loss.backward()
    assert loss.item() == pytest.approx(ref.angular_loss(emb, labels, 40, ref_emb=ref_emb, ref_labels=only_zero))
    assert bool(torch.isfinite(y.grad).all())


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = AngularLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(ref.angular_loss(emb.detach(), labels, 40), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(5)
    emb = (emb * scale).float().requires_grad_()
    loss = AngularLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- indices_tuple


def test_miner_triplets_score_their_positive_pairs_with_repeats() -> None:
    emb, labels = _batch(9, n=12)
    miner = TripletMarginMiner(margin=0.5, type_of_triplets="all")
    triplets = miner(emb, labels)
    assert triplets.anchors.numel() > 0
    pairs = _pairs_of(triplets)
    assert len(set(pairs)) < len(pairs)  # repeated pairs count once per triplet
    expected = ref.angular_loss(emb, labels, 40, pairs=pairs)
    assert AngularLoss()(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def test_given_pairs_use_every_labelled_negative() -> None:
    emb, labels = _batch(10)
    a1, p, a2, n = all_pairs(labels)
    sub = (a1[::2], p[::2], a2[:1], n[:1])
    expected = ref.angular_loss(emb, labels, 40, pairs=_pairs_of(sub))
    assert AngularLoss()(emb, labels, sub).item() == pytest.approx(expected, rel=1e-10)


def test_given_pairs_without_negative_pair_give_zero() -> None:
    emb, labels = _batch(11)
    a1, p, _, _ = all_pairs(labels)
    e = torch.empty(0, dtype=torch.long)
    x = emb.clone().requires_grad_()
    loss = AngularLoss()(x, labels, (a1, p, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((x.grad == 0).all())


def test_all_pairs_as_indices_equal_labels_in_value_and_gradient() -> None:
    # the indices_tuple path scores each distinct pair once and expands; it must equal the dense path
    emb, labels = _batch(12, n=14)
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    a = AngularLoss()(x1, labels)
    b = AngularLoss()(x2, labels, tuple(all_pairs(labels)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-12)


def test_reference_set_gradients_flow_to_both() -> None:
    emb, labels = _batch(13, n=5)
    ref_emb, ref_labels = _batch(14, n=7)
    emb.requires_grad_()
    ref_emb.requires_grad_()
    AngularLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).backward()
    assert emb.grad.abs().sum() > 0 and ref_emb.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("alpha", [-1, 90, 120])
def test_error_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"AngularLoss: `alpha` must be a number >= 0 and < 90, got {alpha!r}.")
    ):
        AngularLoss(alpha=alpha)


def test_error_alpha_not_a_number() -> None:
    with pytest.raises(TypeError, match=re.escape("AngularLoss: `alpha` must be a number, got '40'.")):
        AngularLoss(alpha="40")  # type: ignore[arg-type]


def test_error_distance_type() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "AngularLoss: `distance` must be LpDistance(p=2, power=1, normalize_embeddings=True): the angles are "
            "between unit vectors, got CosineSimilarity."
        ),
    ):
        AngularLoss(distance=CosineSimilarity())


@pytest.mark.parametrize(
    "kwargs,shown",
    [
        ({"power": 2}, "LpDistance(p=2, power=2, normalize_embeddings=True)"),
        ({"p": 1}, "LpDistance(p=1, power=1, normalize_embeddings=True)"),
        ({"normalize_embeddings": False}, "LpDistance(p=2, power=1, normalize_embeddings=False)"),
    ],
)
def test_error_distance_settings(kwargs: dict, shown: str) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "AngularLoss: `distance` must be LpDistance(p=2, power=1, normalize_embeddings=True): the angles are "
            f"between unit vectors, got {shown}."
        ),
    ):
        AngularLoss(distance=LpDistance(**kwargs))


def test_error_labels_missing_with_indices_tuple() -> None:
    emb, labels = _batch(0)
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "AngularLoss: `labels` must be given (the negatives are every sample of another class, even with an "
            "`indices_tuple`), got None."
        ),
    ):
        AngularLoss()(emb, indices_tuple=t)


def test_error_labels_missing() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("AngularLoss: `labels` must be given (or an `indices_tuple` from a miner), got None."),
    ):
        AngularLoss()(_batch(0)[0])


# --------------------------------------------------------------------------------------------- PML parity


def _pml_losses():  # type: ignore[no-untyped-def]
    return pytest.importorskip("pytorch_metric_learning.losses")


@pytest.mark.parametrize("alpha", [0, 20, 40, 55, 80, 89.9])
def test_pml_parity_on_unit_vectors(alpha: float) -> None:
    pml = _pml_losses()
    ours, theirs = AngularLoss(alpha=alpha), pml.AngularLoss(alpha=alpha)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        # Both see unit vectors (where the libraries agree); normalising inside the graph also removes the
        # radial gradient that pytorch-metric-learning's unnormalised negatives would receive.
        a, b = ours(F.normalize(x1, dim=1), labels), theirs(F.normalize(x2, dim=1), labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_pml_parity_with_reference_set_on_unit_vectors() -> None:
    pml = _pml_losses()
    for seed in range(4):
        emb, labels = _batch(seed, n=7, unit=True)
        ref_emb, ref_labels = _batch(seed + 30, n=11, unit=True)
        torch.testing.assert_close(
            AngularLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            pml.AngularLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-6,
        )


@pytest.mark.parametrize("type_of_triplets", ["all", "hard", "semihard"])
def test_pml_parity_with_miner_output(type_of_triplets: str) -> None:
    pml = _pml_losses()
    miner = TripletMarginMiner(margin=0.3, type_of_triplets=type_of_triplets)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, unit=True)
        t = miner(emb, labels)
        torch.testing.assert_close(AngularLoss()(emb, labels, t), pml.AngularLoss()(emb, labels, t), rtol=0, atol=1e-6)


def test_pml_parity_with_pairs_indices_tuple() -> None:
    pml = _pml_losses()
    for seed in range(4):
        emb, labels = _batch(seed, n=10, unit=True)
        a1, p, a2, n = all_pairs(labels)
        g = torch.Generator().manual_seed(seed)
        keep_p = torch.randperm(a1.numel(), generator=g)[: a1.numel() // 2]
        keep_n = torch.randperm(a2.numel(), generator=g)[:3]
        sub = (a1[keep_p], p[keep_p], a2[keep_n], n[keep_n])
        torch.testing.assert_close(
            AngularLoss()(emb, labels, sub), pml.AngularLoss()(emb, labels, sub), rtol=0, atol=1e-6
        )


def test_pml_leaves_negatives_unnormalised() -> None:
    # Documents the one difference: pytorch-metric-learning 2.9.0 normalises anchors and positives but not
    # the negatives, so its value depends on the negatives' norms; dmlkit normalises all three.
    pml = _pml_losses()
    emb, labels = _batch(20, n=10)
    theirs = pml.AngularLoss()(emb, labels).item()
    assert theirs == pytest.approx(ref.angular_loss(emb, labels, 40, normalize_negatives=False), rel=1e-10)
    ours = AngularLoss()(emb, labels).item()
    assert ours == pytest.approx(ref.angular_loss(emb, labels, 40), rel=1e-10)
    assert abs(ours - theirs) > 1e-3


@pytest.mark.parametrize("reducer_name", ["MeanReducer", "AvgNonZeroReducer", "SumReducer"])
def test_repeated_mined_pairs_weighted_by_count_equal_the_repeated_terms(reducer_name: str) -> None:
    """With a chunkable reducer, a pair listed k times is scored once and weighed by k: same value, same gradient."""
    import dmlkit.reducers as reducers
    from dmlkit.miners import TripletMarginMiner

    reducer_cls = getattr(reducers, reducer_name)
    listed_cls = type(f"Listed{reducer_name}", (reducer_cls,), {})
    g = torch.Generator().manual_seed(11)
    emb, labels = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (20,), generator=g)
    indices = TripletMarginMiner(0.5, "all")(emb, labels)
    assert indices[0].numel() > len(set(zip(indices[0].tolist(), indices[1].tolist(), strict=True)))
    results = []
    for reducer in (reducer_cls(), listed_cls()):
        x = emb.clone().requires_grad_(True)
        value = AngularLoss(alpha=40, reducer=reducer)(x, labels, indices)
        value.backward()
        results.append((value.detach(), x.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-13)
