"""MarginLoss against the float64 oracle in tests/reference/margin.py, learnable beta, edge cases and PML."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.indices import all_pairs, random_triplets
from dmlkit.losses.margin import MarginLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import DivisorReducer, MeanReducer, SumReducer
from tests.reference import margin as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, all_triplets

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, tuple[str, dict]]] = {
    "lp": (LpDistance, LP, ("LpDistance", {})),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        DistanceSpec("lp", power=2, normalize=False),
        ("LpDistance", {"normalize_embeddings": False, "power": 2}),
    ),
    "cosine": (CosineSimilarity, COSINE, ("CosineSimilarity", {})),
}

# (margin, beta) per distance: beta inside the range of the values, so that both hinges are sometimes active
SETTINGS = {"lp": (0.2, 1.2), "lp_raw_squared": (1.0, 6.0), "cosine": (0.2, 0.1)}


class _PlainDivisor(DivisorReducer):
    """A DivisorReducer the loss does not recognise, so it scores every triplet one by one."""


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return emb, labels


def _class_beta(num_classes: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return 0.8 + 0.8 * torch.rand(num_classes, generator=g, dtype=torch.float64)


def _with_beta(loss_fn: MarginLoss, beta: Tensor) -> MarginLoss:
    with torch.no_grad():
        loss_fn.beta.copy_(beta.to(loss_fn.beta.dtype))
    return loss_fn


def _triplet_list(t: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("reducer", [None, _PlainDivisor])
def test_matches_oracle(distance: str, reducer: type | None) -> None:
    factory, spec, _ = DISTANCES[distance]
    margin, beta = SETTINGS[distance]
    kwargs = {} if reducer is None else {"reducer": reducer()}
    loss_fn = MarginLoss(margin=margin, beta=beta, distance=factory(), **kwargs)
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.margin_loss(emb, labels, margin, [beta], spec)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("reducer", [None, _PlainDivisor])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_matches_oracle_learned_beta_with_penalty(reducer: type | None, num_classes: int | None) -> None:
    kwargs = {} if reducer is None else {"reducer": reducer()}
    loss_fn = MarginLoss(margin=0.1, nu=0.3, learn_beta=True, num_classes=num_classes, **kwargs)
    beta = _with_beta(loss_fn, _class_beta(num_classes or 1)).beta.tolist()  # as stored (float32)
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.margin_loss(emb, labels, 0.1, beta, LP, nu=0.3, learn_beta=True)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_per_class_beta_indexes_the_anchor_label() -> None:
    # every class has its own boundary; the negative hinge of (a, n) uses a's boundary, not n's
    emb, labels = _batch(3, n=12)
    beta = torch.tensor([0.5, 1.0, 1.6], dtype=torch.float64)
    loss_fn = _with_beta(MarginLoss(margin=0.1, num_classes=3, reducer=SumReducer()), beta)
    pos, neg, betas = ref.margin_hinges(emb, labels, 0.1, beta.tolist())
    triplets = all_triplets(labels.tolist())
    assert betas == [beta[labels[a]].item() for a, _, _ in triplets]
    assert loss_fn(emb, labels).item() == pytest.approx(sum(pos) + sum(neg), rel=1e-10)
    # indexing by the negative's label instead would give another value
    mat = torch.cdist(torch.nn.functional.normalize(emb), torch.nn.functional.normalize(emb))
    wrong = sum(
        max(0.0, 0.1 + mat[a, p].item() - beta[labels[a]].item())
        + max(0.0, 0.1 - mat[a, n].item() + beta[labels[n]].item())
        for a, p, n in triplets
    )
    assert abs(wrong - (sum(pos) + sum(neg))) > 1e-3


def test_mean_reducer_sees_one_value_per_triplet() -> None:
    emb, labels = _batch(4)
    pos, neg, _ = ref.margin_hinges(emb, labels, 0.2, [1.2])
    got = MarginLoss(reducer=MeanReducer())(emb, labels)
    assert got.item() == pytest.approx((sum(pos) + sum(neg)) / len(pos), rel=1e-10)


def test_oracle_sanity_hand_computed() -> None:
    # 1-D points, raw distance: a=0, p=1 (d=1), n=1.5 (d=1.5), and from p: d(p,a)=1, d(p,n)=0.5
    emb = torch.tensor([[0.0], [1.0], [1.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # margin 0.25, beta 1.2: triplet (0,1,2): pos relu(1 - 1.2 + .25) = .05, neg relu(1.2 - 1.5 + .25) = 0
    #                        triplet (1,0,2): pos .05, neg relu(1.2 - 0.5 + .25) = .95 -> 1.05 / 3 non-zero
    loss_fn = MarginLoss(margin=0.25, distance=LpDistance(normalize_embeddings=False))
    assert loss_fn(emb, labels).item() == pytest.approx(0.35, abs=1e-12)
    spec = DistanceSpec("lp", normalize=False)
    assert ref.margin_loss(emb, labels, 0.25, [1.2], spec) == pytest.approx(0.35, abs=1e-12)


@pytest.mark.parametrize("distance", ["lp", "cosine"])
def test_matches_oracle_with_reference_set(distance: str) -> None:
    factory, spec, _ = DISTANCES[distance]
    margin, beta = SETTINGS[distance]
    loss_fn = MarginLoss(margin=margin, beta=beta, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 100, n=9)
        expected = ref.margin_loss(emb, labels, margin, [beta], spec, ref_emb=ref_emb, ref_labels=ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


# --------------------------------------------------------------------------------------------- the fast path


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("with_ref", [False, True])
def test_summed_path_equals_per_triplet_path(num_classes: int | None, with_ref: bool) -> None:
    emb, labels = _batch(5, n=12)
    ref_emb, ref_labels = _batch(6, n=9) if with_ref else (None, None)
    beta = _class_beta(num_classes or 1)
    results = []
    for reducer in (DivisorReducer(), _PlainDivisor()):
        loss_fn = _with_beta(MarginLoss(nu=0.2, learn_beta=True, num_classes=num_classes, reducer=reducer), beta)
        x = emb.clone().requires_grad_()
        r = None if ref_emb is None else ref_emb.clone().requires_grad_()
        loss = loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels)
        loss.backward()
        results.append((loss, x.grad, None if r is None else r.grad, loss_fn.beta.grad))
    (l1, g1, r1, b1), (l2, g2, r2, b2) = results
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)
    torch.testing.assert_close(b1, b2, rtol=0, atol=1e-12)
    if with_ref:
        torch.testing.assert_close(r1, r2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("per_anchor", [1, 40])  # few triplets: gathered one by one; many: counted per cell
def test_summed_path_for_given_triplets_equals_per_triplet_path(num_classes: int | None, per_anchor: int) -> None:
    emb, labels = _batch(12, n=12)
    drawn = random_triplets(labels, t_per_anchor=per_anchor, generator=torch.Generator().manual_seed(0))
    assert (2 * drawn.anchors.numel() >= emb.shape[0] ** 2) is (per_anchor == 40)
    beta = _class_beta(num_classes or 1)
    results = []
    for reducer in (DivisorReducer(), _PlainDivisor()):
        loss_fn = _with_beta(MarginLoss(nu=0.2, learn_beta=True, num_classes=num_classes, reducer=reducer), beta)
        x = emb.clone().requires_grad_()
        loss = loss_fn(x, labels, tuple(drawn))
        loss.backward()
        results.append((loss, x.grad, loss_fn.beta.grad))
    for ours, plain in zip(*results, strict=True):
        torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)
    stored = _with_beta(MarginLoss(learn_beta=True, num_classes=num_classes), beta).beta.tolist()  # float32
    triplets = _triplet_list(drawn)
    expected = ref.margin_loss(emb, labels, 0.2, stored, nu=0.2, learn_beta=True, triplets=triplets)
    assert results[0][0].item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- learnable beta


def test_learn_beta_makes_beta_a_parameter_that_receives_gradients() -> None:
    loss_fn = MarginLoss(learn_beta=True, nu=0.1)
    assert isinstance(loss_fn.beta, nn.Parameter) and loss_fn.beta.shape == (1,)
    assert [name for name, _ in loss_fn.named_parameters()] == ["beta"]
    emb, labels = _batch(7)
    loss_fn(emb, labels).backward()
    pos, neg, _ = ref.margin_hinges(emb, labels, 0.2, [1.2])
    divisor = sum(v > 0 for v in pos) + sum(v > 0 for v in neg)
    # d/dbeta: -1 per active positive hinge, +1 per active negative hinge, over the divisor; plus nu
    expected = (sum(v > 0 for v in neg) - sum(v > 0 for v in pos)) / divisor + 0.1
    assert loss_fn.beta.grad is not None
    assert loss_fn.beta.grad.item() == pytest.approx(expected, rel=1e-6)


def test_fixed_beta_is_a_buffer_outside_the_state_dict() -> None:
    loss_fn = MarginLoss(beta=0.7, num_classes=4)
    assert not isinstance(loss_fn.beta, nn.Parameter) and list(loss_fn.parameters()) == []
    assert loss_fn.beta.tolist() == pytest.approx([0.7] * 4)
    assert "beta" not in loss_fn.state_dict()
    assert loss_fn.beta.dtype == torch.float64  # a float64 input sees beta exactly as given
    assert loss_fn.to(torch.float32).beta.dtype == torch.float32
    assert list(MarginLoss(learn_beta=True).state_dict()) == ["beta"]


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("reducer", [None, _PlainDivisor])
def test_gradcheck_embeddings_and_beta(num_classes: int | None, reducer: type | None) -> None:
    kwargs = {} if reducer is None else {"reducer": reducer()}
    loss_fn = MarginLoss(margin=0.1, nu=0.2, learn_beta=True, num_classes=num_classes, **kwargs)
    for seed in range(50):
        emb, labels = _batch(seed, n=6, d=3, classes=3)
        beta = _class_beta(num_classes or 1, seed).float().double()
        # the hinges' arguments, read off hinges with a margin so large that none is clipped
        big = 100.0
        pos, neg, _ = ref.margin_hinges(emb, labels, big, beta.tolist())
        arguments = [v - big + 0.1 for v in pos + neg]
        # stay clear of the kinks (where the divisor would change too), with some hinges active
        if arguments and min(abs(v) for v in arguments) > 1e-3 and any(v > 0 for v in arguments):
            break
    else:
        pytest.fail("no random batch away from the kinks")

    def f(x: Tensor, b: Tensor) -> Tensor:
        return functional_call(loss_fn, {"beta": b}, (x, labels))

    assert torch.autograd.gradcheck(f, (emb.requires_grad_(), beta.clone().requires_grad_()))


def test_per_class_beta_gradient_only_for_anchor_classes() -> None:
    emb, _ = _batch(8, n=8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss_fn = MarginLoss(margin=0.3, nu=0.1, learn_beta=True, num_classes=6)
    loss_fn(emb, labels).backward()
    grad = loss_fn.beta.grad
    assert grad is not None and grad.shape == (6,)
    assert bool((grad[4:] == 0).all()) and bool((grad[:4] != 0).all())


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = MarginLoss(margin=0.05, beta=1.0)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_triplet_gives_zero_and_zero_gradient_even_with_penalty() -> None:
    emb = _batch(0)[0].requires_grad_()
    loss_fn = MarginLoss(learn_beta=True, nu=0.5)
    loss = loss_fn(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    assert bool((emb.grad == 0).all())
    assert loss_fn.beta.grad is None or bool((loss_fn.beta.grad == 0).all())


def test_single_class_gives_zero_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("MarginLoss: every label in the batch is 1")):
        loss = MarginLoss()(emb, torch.ones(10, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_every_hinge_satisfied_gives_zero() -> None:
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.1]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = MarginLoss(margin=0.2, beta=1.0, distance=LpDistance(normalize_embeddings=False))(emb, labels)
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    factory, spec, _ = DISTANCES[distance]
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = MarginLoss(distance=factory())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(ref.margin_loss(emb.detach(), labels, 0.2, [1.2], spec))


# --------------------------------------------------------------------------------------------- indices_tuple


def test_indices_tuple_of_triplets_and_no_labels() -> None:
    emb, labels = _batch(9)
    triplets = all_triplets(labels.tolist())[::3]
    t = tuple(torch.tensor(c) for c in zip(*triplets, strict=True))
    expected = ref.margin_loss(emb, labels, 0.2, [1.2], triplets=triplets)
    assert MarginLoss()(emb, labels, t).item() == pytest.approx(expected, rel=1e-10)
    assert MarginLoss()(emb, indices_tuple=t).item() == pytest.approx(expected, rel=1e-10)


def test_indices_tuple_of_pairs() -> None:
    emb, labels = _batch(10)
    a1, p, a2, n = all_pairs(labels)
    sub = (a1[::2], p[::2], a2[::3], n[::3])
    pos = list(zip(sub[0].tolist(), sub[1].tolist(), strict=True))
    neg = list(zip(sub[2].tolist(), sub[3].tolist(), strict=True))
    triplets = [(a, q, m) for a, q in pos for b, m in neg if a == b]
    assert triplets
    expected = ref.margin_loss(emb, labels, 0.2, [1.2], triplets=triplets)
    assert MarginLoss()(emb, labels, sub).item() == pytest.approx(expected, rel=1e-10)


def test_random_triplets_reproducible_with_generator() -> None:
    emb, labels = _batch(11, n=12)

    def run() -> float:
        gen = torch.Generator().manual_seed(3)
        return MarginLoss(triplets_per_anchor=4, generator=gen)(emb, labels).item()

    assert run() == run()
    drawn = random_triplets(labels, t_per_anchor=4, generator=torch.Generator().manual_seed(3))
    expected = ref.margin_loss(emb, labels, 0.2, [1.2], triplets=_triplet_list(drawn))
    assert run() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("label", [3, 7])
def test_error_label_at_or_above_num_classes(label: int) -> None:
    emb, _ = _batch(0, n=4)
    labels = torch.tensor([0, 1, label, 1])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "MarginLoss: `labels` must be in [0, num_classes) = [0, 3) to index the per-class beta, "
            f"got labels from 0 to {label}."
        ),
    ):
        MarginLoss(num_classes=3)(emb, labels)


def test_error_negative_label_with_num_classes() -> None:
    emb, _ = _batch(0, n=4)
    with pytest.raises(ValueError, match=re.escape("[0, 3) to index the per-class beta, got labels from -1 to 1.")):
        MarginLoss(num_classes=3)(emb, torch.tensor([0, 1, -1, 1]))


def test_error_num_classes_without_labels() -> None:
    emb, _ = _batch(0, n=4)
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "MarginLoss: `labels` must be given when `num_classes` is set (each anchor's class picks its beta), "
            "got None."
        ),
    ):
        MarginLoss(num_classes=3)(emb, indices_tuple=t)


@pytest.mark.parametrize("bad", [0, -2, True, 2.0])
def test_error_num_classes(bad: object) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"MarginLoss: `num_classes` must be None or a positive integer, got {bad!r}.")
    ):
        MarginLoss(num_classes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("arg", ["margin", "nu"])
def test_error_negative_margin_or_nu(arg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"MarginLoss: `{arg}` must be a number >= 0, got -0.1.")):
        MarginLoss(**{arg: -0.1})


def test_error_beta_nan() -> None:
    with pytest.raises(ValueError, match=re.escape("MarginLoss: `beta` must be a number, not NaN, got nan.")):
        MarginLoss(beta=float("nan"))


@pytest.mark.parametrize("bad", [0, -1, "some", True, None])
def test_error_bad_triplets_per_anchor(bad: object) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(f'MarginLoss: `triplets_per_anchor` must be "all" or a positive integer, got {bad!r}.'),
    ):
        MarginLoss(triplets_per_anchor=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML parity


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][2]
    return getattr(distances, cls_name)(**kwargs)


PARITY_GRID = list(itertools.product(list(DISTANCES), [False, True], [None, 4], [None, "mean"]))


@pytest.mark.parametrize("distance,learn_beta,num_classes,reducer", PARITY_GRID)
def test_pml_parity(distance: str, learn_beta: bool, num_classes: int | None, reducer: str | None) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    margin, beta = SETTINGS[distance]
    common = {"margin": margin, "nu": 0.2, "beta": beta, "learn_beta": learn_beta, "num_classes": num_classes}
    ours = MarginLoss(distance=DISTANCES[distance][0](), **common, **({"reducer": MeanReducer()} if reducer else {}))
    theirs = pml_losses.MarginLoss(
        distance=_pml_distance(distance), **common, **({"reducer": pml_reducers.MeanReducer()} if reducer else {})
    )
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
        if learn_beta:
            torch.testing.assert_close(ours.beta.grad, theirs.beta.grad, rtol=0, atol=1e-6)
            ours.beta.grad = None
            theirs.beta.grad = None


@pytest.mark.parametrize("num_classes", [None, 4])
def test_pml_parity_with_reference_set(num_classes: int | None) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(4):
        emb, labels = _batch(seed, n=7, classes=4)
        ref_emb, ref_labels = _batch(seed + 30, n=11, classes=4)
        torch.testing.assert_close(
            MarginLoss(num_classes=num_classes)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            pml_losses.MarginLoss(num_classes=num_classes)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).to(
                torch.float64
            ),
            rtol=0,
            atol=1e-6,
        )


@pytest.mark.parametrize("type_of_triplets", ["all", "hard", "semihard", "easy"])
def test_pml_parity_with_miner_output(type_of_triplets: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    miner = TripletMarginMiner(margin=0.3, type_of_triplets=type_of_triplets)
    for seed in range(4):
        emb, labels = _batch(seed, n=12)
        t = miner(emb, labels)
        torch.testing.assert_close(
            MarginLoss(learn_beta=True, nu=0.1)(emb, labels, t),
            pml_losses.MarginLoss(learn_beta=True, nu=0.1)(emb, labels, t).to(torch.float64),
            rtol=0,
            atol=1e-6,
        )


def test_pml_parity_with_pairs_indices_tuple() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(4):
        emb, labels = _batch(seed, n=10)
        a1, p, a2, n = all_pairs(labels)
        g = torch.Generator().manual_seed(seed)
        keep_p = torch.randperm(a1.numel(), generator=g)[: a1.numel() // 2]
        keep_n = torch.randperm(a2.numel(), generator=g)[: a2.numel() // 2]
        sub = (a1[keep_p], p[keep_p], a2[keep_n], n[keep_n])
        torch.testing.assert_close(
            MarginLoss(margin=0.5)(emb, labels, sub),
            pml_losses.MarginLoss(margin=0.5)(emb, labels, sub).to(torch.float64),
            rtol=0,
            atol=1e-6,
        )


def test_pml_same_state_dict_keys() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for kwargs in ({}, {"learn_beta": True}, {"learn_beta": True, "num_classes": 5}, {"num_classes": 5}):
        assert list(MarginLoss(**kwargs).state_dict()) == list(pml_losses.MarginLoss(**kwargs).state_dict())
    theirs = pml_losses.MarginLoss(learn_beta=True, num_classes=5, beta=0.9)
    ours = MarginLoss(learn_beta=True, num_classes=5)
    ours.load_state_dict(theirs.state_dict())
    assert ours.beta.tolist() == pytest.approx([0.9] * 5)
