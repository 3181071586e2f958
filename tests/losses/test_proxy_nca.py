"""ProxyNCALoss against the float64 oracle in tests/reference/proxy_nca.py, autograd, low precision, training,
errors and pytorch-metric-learning."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.losses.proxy_nca import ProxyNCALoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.regularizers import LpRegularizer
from tests.losses.cases import PAIR_LOSS_DISTANCES, DistanceCase, random_batch
from tests.losses.proxy_cases import (
    assert_finite_under_bf16_autocast,
    assert_gradcheck,
    assert_same_as_pml,
    assert_same_as_pml_with_miner,
    blobs,
    copy_weights,
    pml_losses,
    train,
)
from tests.reference import distances as ref_dist
from tests.reference import proxy_nca as ref

DISTANCES: dict[str, DistanceCase] = {name: PAIR_LOSS_DISTANCES[name] for name in ("lp_squared", "lp", "cosine")}
SCALES = [1.0, 0.3, 8.0]


def _loss(distance: str = "lp_squared", scale: float = 1.0, classes: int = 3, dim: int = 4) -> ProxyNCALoss:
    return ProxyNCALoss(classes, dim, softmax_scale=scale, distance=DISTANCES[distance][0]()).double()


def _oracle(
    loss_fn: ProxyNCALoss, distance: str, emb: Tensor, labels: Tensor, weights: list[float] | None = None
) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), loss_fn.proxies.tolist())
    return ref.proxy_nca_loss(mat, labels.tolist(), loss_fn.softmax_scale, higher, weights)


def _anchor_weights(indices: tuple[Tensor, ...], size: int) -> list[float]:
    counts = [0] * size
    anchors = indices[0].tolist() + (indices[2].tolist() if len(indices) == 4 else [])
    for i in anchors:
        counts[i] += 1
    return [c / max(counts) for c in counts]


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance,scale", list(itertools.product(DISTANCES, SCALES)))
def test_matches_oracle(distance: str, scale: float) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = _loss(distance, scale)
        emb, labels = random_batch(seed)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(loss_fn, distance, emb, labels), rel=1e-10)


def test_defaults_and_parameter() -> None:
    loss_fn = ProxyNCALoss(5, 7)
    assert isinstance(loss_fn.distance, LpDistance) and loss_fn.distance.power == 2
    assert loss_fn.softmax_scale == 1
    assert loss_fn.proxies.shape == (5, 7) and loss_fn.proxies.dtype == torch.float32
    assert [name for name, _ in loss_fn.named_parameters()] == ["proxies"]
    assert loss_fn.weight_init_func is torch.nn.init.normal_
    assert torch.equal(loss_fn.get_logits(torch.eye(7)[:2]), loss_fn.distance(torch.eye(7)[:2], loss_fn.proxies))


def test_mined_anchors_weight_the_samples() -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = _loss()
        emb, labels = random_batch(seed, n=12)
        mined = TripletMarginMiner(margin=0.5)(emb, labels)
        assert mined.anchors.numel() > 0
        expected = _oracle(loss_fn, "lp_squared", emb, labels, _anchor_weights(tuple(mined), 12))
        assert loss_fn(emb, labels, mined).item() == pytest.approx(expected, rel=1e-10)


def test_weight_regularizer_adds_its_penalty() -> None:
    torch.manual_seed(0)
    emb, labels = random_batch(0)
    loss_fn = ProxyNCALoss(3, 4, weight_regularizer=LpRegularizer(), weight_reg_weight=0.25).double()
    expected = _oracle(loss_fn, "lp_squared", emb, labels) + 0.25 * loss_fn.proxies.norm(dim=1).mean().item()
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    torch.manual_seed(0)
    loss_fn = _loss(distance, 2.0, classes=3, dim=3)
    emb, labels = random_batch(1, n=5, d=3)
    assert_gradcheck(loss_fn, emb, labels, "proxies")


# --------------------------------------------------------------------------------------------- edge cases


def test_one_sample_and_one_class() -> None:
    loss_fn = _loss(classes=1)
    emb = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(emb, torch.zeros(3, dtype=torch.long))
    loss.backward()
    # a single proxy is always picked: probability 1, loss 0, no gradient
    assert loss.item() == pytest.approx(0.0, abs=1e-15) and float(emb.grad.abs().max()) < 1e-12
    single = _loss()(torch.randn(1, 4, dtype=torch.float64), torch.tensor([2]))
    assert single.item() > 0


def test_large_scale_stays_finite_in_float32() -> None:
    torch.manual_seed(0)
    loss_fn = ProxyNCALoss(3, 4, softmax_scale=1e4)
    emb, labels = random_batch(3)
    emb32 = emb.float().requires_grad_()
    loss = loss_fn(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    expected = ref.proxy_nca_loss(
        ref_dist.lp_matrix(emb.tolist(), loss_fn.proxies.double().tolist(), power=2), labels.tolist(), 1e4
    )
    assert loss.item() == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_bf16_autocast_is_finite(distance: str) -> None:
    assert_finite_under_bf16_autocast(
        lambda: ProxyNCALoss(3, 6, distance=DISTANCES[distance][0]()), 6, lambda n: torch.arange(n) % 3
    )


def test_proxies_train() -> None:
    x, labels = blobs(0)
    loss_fn = ProxyNCALoss(4, 8, softmax_scale=4)
    first, last, embedder = train(loss_fn, x, labels, 8)
    assert last < 0.5 * first
    with torch.no_grad():
        nearest = loss_fn.distance(embedder(x), loss_fn.proxies).argmin(dim=1)
    assert torch.equal(nearest, labels)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -1.5])
def test_error_softmax_scale(bad: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"ProxyNCALoss: `softmax_scale` must be a number > 0, got {bad!r}.")
    ):
        ProxyNCALoss(3, 4, softmax_scale=bad)


def test_error_sizes_and_labels() -> None:
    with pytest.raises(
        ValueError, match=re.escape("ProxyNCALoss: `embedding_size` must be a positive integer, got 0.")
    ):
        ProxyNCALoss(3, 0)
    with pytest.raises(ValueError, match=re.escape("ProxyNCALoss: `labels` must be class indices in [0, 3), got 3.")):
        ProxyNCALoss(3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=re.escape("ProxyNCALoss: `labels` must be given")):
        ProxyNCALoss(3, 4)(torch.randn(2, 4))


# --------------------------------------------------------------------------------------------- PML parity


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][3]
    return getattr(distances, cls_name)(**kwargs)


@pytest.mark.parametrize("distance,scale", list(itertools.product(DISTANCES, SCALES)))
def test_pml_parity(distance: str, scale: float) -> None:
    losses = pml_losses()
    for seed in range(2):
        torch.manual_seed(seed)
        theirs = losses.ProxyNCALoss(5, 6, softmax_scale=scale, distance=_pml_distance(distance))
        ours = ProxyNCALoss(5, 6, softmax_scale=scale, distance=DISTANCES[distance][0]())
        copy_weights(ours, theirs, "proxies")
        emb, labels = random_batch(seed, n=16, d=6, classes=5)
        assert_same_as_pml(ours, theirs, emb, labels, "proxies")


@pytest.mark.parametrize("miner", ["TripletMarginMiner", "PairMarginMiner"])
def test_pml_parity_with_miner_output(miner: str) -> None:
    losses = pml_losses()
    miners = pytest.importorskip("pytorch_metric_learning.miners")
    make = {
        "TripletMarginMiner": lambda: miners.TripletMarginMiner(0.5),
        "PairMarginMiner": lambda: miners.PairMarginMiner(0.3, 0.6),
    }
    assert_same_as_pml_with_miner(lambda: (losses.ProxyNCALoss(4, 5), ProxyNCALoss(4, 5)), make[miner])


def test_differs_from_pml_where_the_probability_underflows() -> None:
    # pytorch-metric-learning drops a sample whose probability of its own proxy underflows to 0 (the hardest
    # ones); dmlkit computes -log p in log space and keeps it
    losses = pml_losses()
    theirs = losses.ProxyNCALoss(2, 2, softmax_scale=1000)
    ours = ProxyNCALoss(2, 2, softmax_scale=1000)
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        theirs.proxies.copy_(proxies)
    copy_weights(ours, theirs, "proxies")
    emb = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1])
    values = ref.proxy_nca_values(
        ref_dist.lp_matrix(emb.tolist(), proxies.tolist(), power=2), labels.tolist(), 1000, False
    )
    assert values[0] > 1000 and max(values[1:]) < 1e-100
    assert ours(emb, labels).item() == pytest.approx(sum(values) / 3, rel=1e-10)
    assert theirs(emb, labels).item() == pytest.approx(sum(values[1:]) / 2, abs=1e-12)
