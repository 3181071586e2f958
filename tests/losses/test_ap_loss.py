"""APLoss against a hand-computed example, the float64 loop oracle in tests/reference/ap_loss.py and sklearn's
average precision; its error-driven backward; training; edge cases and errors.

pytorch-metric-learning has no AP-loss, so there is no parity test.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.losses import LOSSES, APLoss
from dmlkit.losses import ap_loss as ap_module
from dmlkit.losses.ap_loss import ap_loss_error_driven, smoothed_step
from dmlkit.reducers import SumReducer
from dmlkit.types import Pairs, Triplets
from tests.reference import ap_loss as ref

DELTAS = [0.0, 0.1, 0.5, 1.0]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return emb, labels


def _oracle_embedding_grad(emb: Tensor, score_grad: list[list[float]], ref_emb: Tensor | None = None) -> Tensor:
    """The error-driven gradient on the scores carried to the embeddings through the cosine similarity."""
    x = emb.detach().clone().requires_grad_()
    r = x if ref_emb is None else ref_emb
    scores = CosineSimilarity()(x, r)
    (grad,) = torch.autograd.grad(scores, x, torch.tensor(score_grad, dtype=emb.dtype))
    return grad


# --------------------------------------------------------------------------------------------- hand computed


def test_hand_computed_value_and_update() -> None:
    # one anchor; positives i1 (score 0.8), i2 (0.3); negatives j1 (0.6), j2 (0.2); delta = 0.25,
    # so H(x) = clamp(2 x + 1/2, 0, 1)
    #   i1: x to i2, j1, j2 = -0.5, -0.2, -0.6 -> H = 0, 0.1, 0     -> rank 1.1; L_i1j1 = 0.1 / 1.1, L_i1j2 = 0
    #   i2: x to i1, j1, j2 =  0.5,  0.3, -0.1 -> H = 1, 1, 0.3     -> rank 3.3; L_i2j1 = 1 / 3.3, L_i2j2 = 0.3 / 3.3
    l11, l12, l21, l22 = 0.1 / 1.1, 0.0, 1 / 3.3, 0.3 / 3.3
    expected_loss = (l11 + l12 + l21 + l22) / 2
    # error-driven update: positive i gets -sum_j L_ij / |P|, negative j gets +sum_i L_ij / |P|
    expected_grad = [-(l11 + l12) / 2, -(l21 + l22) / 2, (l11 + l21) / 2, (l12 + l22) / 2]

    scores = torch.tensor([[0.8, 0.3, 0.6, 0.2]], dtype=torch.float64, requires_grad=True)
    positive = torch.tensor([[True, True, False, False]])
    negative = ~positive
    loss = ap_loss_error_driven(scores, positive, negative, delta=0.25)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    loss.sum().backward()
    assert scores.grad is not None
    assert scores.grad[0].tolist() == pytest.approx(expected_grad, rel=1e-12)
    assert ref.anchor_ap_loss([0.8, 0.3, 0.6, 0.2], [0, 1], [2, 3], 0.25) == (
        pytest.approx(expected_loss, rel=1e-12),
        pytest.approx(expected_grad, rel=1e-12),
    )

    # the same through the loss: one anchor embedding [1], reference "embeddings" equal to the scores
    anchor = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    items = torch.tensor([[0.8], [0.3], [0.6], [0.2]], dtype=torch.float64, requires_grad=True)
    loss_fn = APLoss(delta=0.25, distance=DotProductSimilarity(normalize_embeddings=False))
    value = loss_fn(anchor, torch.tensor([0]), ref_emb=items, ref_labels=torch.tensor([0, 0, 1, 1]))
    assert value.item() == pytest.approx(expected_loss, rel=1e-12)
    value.backward()
    assert items.grad is not None and anchor.grad is not None
    assert items.grad[:, 0].tolist() == pytest.approx(expected_grad, rel=1e-12)
    # d s_k / d anchor = item k
    assert anchor.grad.item() == pytest.approx(
        sum(g * s for g, s in zip(expected_grad, [0.8, 0.3, 0.6, 0.2], strict=True))
    )


def test_smoothed_step_pieces() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    assert smoothed_step(x, 1.0).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert smoothed_step(x, 0.0).tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert smoothed_step(x, 0.5).tolist() == [ref.step(v, 0.5) for v in x.tolist()]


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("delta", DELTAS)
def test_matches_oracle_value_and_gradient(delta: float) -> None:
    for seed in range(4):
        emb, labels = _batch(seed)
        x = emb.clone().requires_grad_()
        loss = APLoss(delta=delta)(x, labels)
        scores = ref.cosine_matrix(emb, emb)
        expected, score_grad = ref.ap_loss(scores, labels.tolist(), delta=delta)
        assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        loss.backward()
        torch.testing.assert_close(x.grad, _oracle_embedding_grad(emb, score_grad), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_matches_oracle_with_reference_set(delta: float) -> None:
    emb, labels = _batch(10, n=5)
    ref_emb, ref_labels = _batch(11, n=9)
    x = emb.clone().requires_grad_()
    loss = APLoss(delta=delta)(x, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    expected, score_grad = ref.ap_loss(ref.cosine_matrix(emb, ref_emb), labels.tolist(), ref_labels.tolist(), delta)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(x.grad, _oracle_embedding_grad(emb, score_grad, ref_emb), rtol=1e-9, atol=1e-12)


def test_a_distance_is_negated_into_scores() -> None:
    emb, labels = _batch(12)
    dist = torch.cdist(emb, emb)
    scores = (-dist).tolist()
    expected, _ = ref.ap_loss(scores, labels.tolist(), delta=0.5)
    assert APLoss(delta=0.5, distance=LpDistance(normalize_embeddings=False))(emb, labels).item() == pytest.approx(
        expected, rel=1e-10
    )


@pytest.mark.parametrize("seed", range(5))
def test_delta_zero_is_exactly_one_minus_sklearn_average_precision(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    emb, labels = _batch(seed, n=16, classes=4)
    scores = CosineSimilarity()(emb)
    aps = []
    for a in range(16):
        others = [k for k in range(16) if k != a]
        truth = (labels[others] == labels[a]).numpy()
        if truth.any():
            aps.append(metrics.average_precision_score(truth, scores[a, others].numpy()))
    expected = 1 - sum(aps) / len(aps)
    assert APLoss(delta=0.0)(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(13, n=20)
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    whole = APLoss(delta=0.2)(x1, labels)
    whole.backward()
    monkeypatch.setattr(ap_module, "_BLOCK_ELEMENTS", 20 * 20 * 3)  # blocks of 3 anchors
    blocked = APLoss(delta=0.2)(x2, labels)
    blocked.backward()
    assert blocked.item() == pytest.approx(whole.item(), rel=1e-14)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-13, atol=1e-15)


def test_backward_is_the_update_not_the_surrogate_derivative() -> None:
    # with delta = 0 the value is piecewise constant in the scores (autograd would give zero), yet the update
    # moves every misranked positive up and negative down
    scores = torch.tensor([[0.1, 0.9, 0.5]], dtype=torch.float64, requires_grad=True)
    loss = ap_loss_error_driven(scores, torch.tensor([[True, False, False]]), torch.tensor([[False, True, True]]), 0.0)
    loss.sum().backward()
    assert scores.grad is not None
    # the positive is ranked third: rank 3, L = 1/3 against each negative
    assert scores.grad[0].tolist() == pytest.approx([-2 / 3, 1 / 3, 1 / 3], rel=1e-12)


def test_mined_pairs_and_triplets_restrict_the_ranking() -> None:
    emb, _ = _batch(14, n=6)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    scores = ref.cosine_matrix(emb, emb)
    positives = {0: [k for k in range(6) if k != 0 and labels[k] == labels[0]][:1]}
    negatives = {0: [k for k in range(6) if labels[k] != labels[0]][:2]}
    expected, _ = ref.anchor_ap_loss(scores[0], positives[0], negatives[0], 0.5)
    pairs = Pairs(
        torch.tensor([0] * len(positives[0])),
        torch.tensor(positives[0]),
        torch.tensor([0] * len(negatives[0])),
        torch.tensor(negatives[0]),
    )
    assert APLoss(delta=0.5)(emb, labels, pairs).item() == pytest.approx(expected, rel=1e-10)
    # triplets (0, p, n1), (0, p, n2) hold the same pairs
    p, (n1, n2) = positives[0][0], negatives[0]
    triplets = Triplets(torch.tensor([0, 0]), torch.tensor([p, p]), torch.tensor([n1, n2]))
    assert APLoss(delta=0.5)(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)


def test_reducer_sees_one_term_per_anchor_with_a_positive() -> None:
    emb = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2])  # anchor 4 has no positive
    per_anchor = [
        ref.anchor_ap_loss(
            row,
            [k for k in range(5) if k != a and labels[k] == labels[a]],
            [k for k in range(5) if labels[k] != labels[a]],
            1.0,
        )[0]
        for a, row in enumerate(ref.cosine_matrix(emb, emb))
    ][:4]
    assert APLoss(reducer=SumReducer())(emb, labels).item() == pytest.approx(sum(per_anchor), rel=1e-10)
    assert APLoss()(emb, labels).item() == pytest.approx(sum(per_anchor) / 4, rel=1e-10)


def test_registered() -> None:
    assert LOSSES["ap"] is APLoss


# --------------------------------------------------------------------------------------------- training


def _mean_average_precision(emb: Tensor, labels: Tensor) -> float:
    metrics = pytest.importorskip("sklearn.metrics")
    scores = CosineSimilarity()(emb.detach())
    n = emb.shape[0]
    aps = []
    for a in range(n):
        others = [k for k in range(n) if k != a]
        aps.append(metrics.average_precision_score((labels[others] == labels[a]).numpy(), scores[a, others].numpy()))
    return sum(aps) / n


def test_sgd_raises_mean_average_precision() -> None:
    # small matrices: one thread is faster and, on a busy machine, far more predictable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_check()
    finally:
        torch.set_num_threads(threads)


def _train_and_check() -> None:
    g = torch.Generator().manual_seed(0)
    classes, per_class, dim = 4, 16, 16
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, dim, generator=g)
    x = centres[labels] + 1.5 * torch.randn(classes * per_class, dim, generator=g)
    model = torch.nn.Linear(dim, 8)
    with torch.no_grad():
        model.weight.copy_(torch.randn(8, dim, generator=g) / dim**0.5)
        model.bias.zero_()
    loss_fn = APLoss(delta=0.1)
    before_map = _mean_average_precision(model(x), labels)
    before_loss = loss_fn(model(x), labels).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(60):
        optimizer.zero_grad()
        loss_fn(model(x), labels).backward()
        optimizer.step()
    after_map = _mean_average_precision(model(x), labels)
    assert after_map > before_map + 0.15, (before_map, after_map)
    assert loss_fn(model(x), labels).item() < before_loss


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_loss_and_zero_gradient() -> None:
    emb, _ = _batch(20, n=5)
    x = emb.clone().requires_grad_()
    loss = APLoss()(x, torch.arange(5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert x.grad is not None and bool((x.grad == 0).all())


def test_one_class_gives_zero_loss_and_a_warning() -> None:
    emb, _ = _batch(21, n=5)
    x = emb.clone().requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("APLoss: every label in the batch is 3, so there are no negative")):
        loss = APLoss()(x, torch.full((5,), 3))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and bool((x.grad == 0).all())


def test_identical_embeddings_tie_at_one_half() -> None:
    # every score equal (3, exactly): with delta = 0 each tie counts half
    x = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = APLoss(delta=0.0, distance=DotProductSimilarity(normalize_embeddings=False))(x, labels)
    # each anchor: one positive ranked among two negatives, rank 1 + 2 * (1/2) = 2, L = (1/2) / 2 per negative
    assert loss.item() == pytest.approx(2 * 0.5 / 2, rel=1e-12)
    loss.backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_float32_huge_batch_values_stay_finite() -> None:
    emb, labels = _batch(22, n=40)
    x = (emb * 1e4).float().requires_grad_()
    loss = APLoss()(x, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and x.grad is not None and bool(torch.isfinite(x.grad).all())


# --------------------------------------------------------------------------------------------- errors


def test_error_negative_delta() -> None:
    with pytest.raises(ValueError, match=re.escape("APLoss: `delta` must be a number >= 0, got -0.1.")):
        APLoss(delta=-0.1)


def test_error_missing_labels() -> None:
    emb, _ = _batch(0)
    with pytest.raises(
        ValueError, match=re.escape("APLoss: `labels` must be given (or an `indices_tuple` from a miner), got None.")
    ):
        APLoss()(emb)


def test_error_non_finite_embeddings() -> None:
    emb, labels = _batch(0)
    emb[2, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("APLoss: `embeddings` must be finite (no NaN or Inf)")):
        APLoss()(emb, labels)


def test_error_wrong_number_of_labels() -> None:
    emb, _ = _batch(0)
    with pytest.raises(ValueError, match=re.escape("APLoss: `labels`")):
        APLoss()(emb, torch.zeros(3, dtype=torch.long))
