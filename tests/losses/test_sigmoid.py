"""SigmoidLoss against the float64 oracle in tests/reference/sigmoid.py (SigLIP's Algorithm 1), on the dense and the
tiled path; gradients of the embeddings, temperature and bias by gradcheck; edge cases and exact errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.indices import all_pairs
from dmlkit.losses.sigmoid import SigmoidLoss
from dmlkit.miners import PairMarginMiner
from tests.reference import distances as ref_dist
from tests.reference import sigmoid as ref

CHUNKS = [0, 3]


def _batch(seed: int, n: int = 9, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _pair_sets(pairs: tuple[Tensor, ...]) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    a1, p, a2, n = (t.tolist() for t in pairs)
    return set(zip(a1, p, strict=True)), set(zip(a2, n, strict=True))


def _oracle(
    emb: Tensor, ref_emb: Tensor, pairs: tuple[Tensor, ...], t: float, b: float, normalize: bool = True
) -> float:
    sim = (
        ref_dist.cosine_matrix(emb.tolist(), ref_emb.tolist())
        if normalize
        else ref_dist.dot_matrix(emb.tolist(), ref_emb.tolist(), normalize=False)
    )
    positive, negative = _pair_sets(pairs)
    return ref.sigmoid_loss(sim, positive, negative, t, b)


def _parameters(loss_fn: SigmoidLoss) -> tuple[float, float]:
    """The loss's ``(t, b)`` as stored (in float32 by default)."""
    return math.exp(loss_fn.log_temperature.item()), loss_fn.bias.item()


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("t,b", [(10.0, -10.0), (1.0, 0.0), (3.0, 2.5)])
def test_matches_oracle(chunk: int, t: float, b: float) -> None:
    for seed in range(3):
        emb, labels = _batch(seed)
        loss_fn = SigmoidLoss(temperature=t, bias=b, chunk_size=chunk).double()
        got = loss_fn(emb, labels).item()
        assert got == pytest.approx(_oracle(emb, emb, all_pairs(labels), *_parameters(loss_fn)), rel=1e-10)
        assert _parameters(loss_fn) == pytest.approx((t, b), rel=1e-6)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_image_text_pairs_as_in_the_paper(chunk: int) -> None:
    images, _ = _batch(1, n=6)
    texts, _ = _batch(2, n=6)
    labels = torch.arange(6)
    got = SigmoidLoss(chunk_size=chunk)(images, labels, ref_emb=texts, ref_labels=labels.clone())
    # Algorithm 1 of the paper, on normalised embeddings: logits = t x.y + b, labels 2 I - 1, -sum(log_sigmoid) / n
    x, y = torch.nn.functional.normalize(images), torch.nn.functional.normalize(texts)
    logits = 10.0 * x @ y.T - 10.0
    signs = 2 * torch.eye(6, dtype=torch.float64) - 1
    expected = -torch.nn.functional.logsigmoid(signs * logits).sum() / 6
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    positive = {(i, i) for i in range(6)}
    negative = {(i, j) for i in range(6) for j in range(6) if i != j}
    sim = ref_dist.cosine_matrix(images.tolist(), texts.tolist())
    assert got.item() == pytest.approx(ref.sigmoid_loss(sim, positive, negative), rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reference_set_and_unnormalised_dot_product(chunk: int) -> None:
    emb, labels = _batch(3, n=5)
    ref_emb, ref_labels = _batch(4, n=8)
    distance = DotProductSimilarity(normalize_embeddings=False)
    loss_fn = SigmoidLoss(temperature=0.5, bias=0.3, chunk_size=chunk, distance=distance).double()
    got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    expected = _oracle(emb, ref_emb, all_pairs(labels, ref_labels), *_parameters(loss_fn), normalize=False)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_mined_pairs_count_once(chunk: int) -> None:
    emb, labels = _batch(5, n=10)
    pairs = PairMarginMiner(pos_margin=0.3, neg_margin=1.2)(emb, labels)
    assert pairs[0].numel() > 0 and pairs[2].numel() > 0
    loss_fn = SigmoidLoss(chunk_size=chunk)
    got = loss_fn(emb, labels, pairs).item()
    assert got == pytest.approx(_oracle(emb, emb, tuple(pairs), 10.0, -10.0), rel=1e-10)
    doubled = tuple(torch.cat([t, t]) for t in pairs)
    assert loss_fn(emb, None, doubled).item() == pytest.approx(got, rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gradcheck_embeddings_temperature_and_bias(chunk: int) -> None:
    emb, labels = _batch(6, n=5, d=3, classes=2)
    ref_emb, ref_labels = _batch(7, n=4, d=3, classes=2)
    loss_fn = SigmoidLoss(temperature=2.0, bias=-1.0, chunk_size=chunk).double()

    def run(x: Tensor, r: Tensor, log_t: Tensor, b: Tensor) -> Tensor:
        params = {"log_temperature": log_t, "bias": b}
        return functional_call(loss_fn, params, (x, labels), {"ref_emb": r, "ref_labels": ref_labels})

    inputs = (emb, ref_emb, torch.tensor(math.log(2.0), dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64))
    assert torch.autograd.gradcheck(run, tuple(x.clone().requires_grad_() for x in inputs))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_temperature_and_bias_are_learnable_parameters(chunk: int) -> None:
    loss_fn = SigmoidLoss(chunk_size=chunk)
    assert loss_fn.log_temperature.item() == pytest.approx(math.log(10.0)) and loss_fn.bias.item() == -10.0
    assert {name for name, _ in loss_fn.named_parameters()} == {"log_temperature", "bias"}
    emb, labels = _batch(8)
    loss_fn(emb.float(), labels).backward()
    assert loss_fn.log_temperature.grad is not None and loss_fn.bias.grad is not None
    assert loss_fn.log_temperature.grad.item() != 0 and loss_fn.bias.grad.item() != 0
    fixed = SigmoidLoss(learnable=False, chunk_size=chunk)
    assert not fixed.log_temperature.requires_grad and not fixed.bias.requires_grad
    fixed(emb.float().requires_grad_(), labels).backward()
    assert fixed.log_temperature.grad is None


# --------------------------------------------------------------------------------------------- edge cases


@pytest.mark.filterwarnings("ignore:SigmoidLoss. every label")
@pytest.mark.parametrize("chunk", CHUNKS)
def test_one_sample_has_no_pair(chunk: int) -> None:
    emb = _batch(9, n=1)[0].requires_grad_()
    loss = SigmoidLoss(chunk_size=chunk)(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_single_class_has_only_positives(chunk: int) -> None:
    emb, _ = _batch(10, n=6)
    labels = torch.zeros(6, dtype=torch.long)
    with pytest.warns(UserWarning, match="SigmoidLoss: every label in the batch is 0"):
        got = SigmoidLoss(chunk_size=chunk)(emb, labels).item()
    assert got == pytest.approx(_oracle(emb, emb, all_pairs(labels), 10.0, -10.0), rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_large_temperature_stays_finite_in_float32(chunk: int) -> None:
    emb, labels = _batch(11)
    x = emb.float().requires_grad_()
    loss = SigmoidLoss(temperature=1e4, bias=5.0, chunk_size=chunk)(x, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(x.grad).all())


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("SigmoidLoss: `temperature` must be a number > 0, got 0.")):
        SigmoidLoss(temperature=0)
    with pytest.raises(ValueError, match=re.escape("SigmoidLoss: `bias` must be a number, not NaN, got nan.")):
        SigmoidLoss(bias=float("nan"))
    with pytest.raises(TypeError, match=re.escape("SigmoidLoss: `learnable` must be a bool, got int.")):
        SigmoidLoss(learnable=1)  # type: ignore[arg-type]
    rule = "a similarity (higher is closer), e.g. CosineSimilarity()"
    with pytest.raises(ValueError, match=re.escape(f"SigmoidLoss: `distance` must be {rule}, got 'LpDistance'.")):
        SigmoidLoss(distance=LpDistance())
    with pytest.raises(ValueError, match=re.escape("SigmoidLoss: `labels` must be given")):
        SigmoidLoss()(torch.randn(4, 3))
