"""GradCache: the encoder's (and the loss's) parameter gradients equal those of one pass over the whole batch, with
dropout (random state replayed), buffers, two towers, miners, input containers; exact errors."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from dmlkit.losses import NTXentLoss, SupConLoss, TripletMarginLoss
from dmlkit.losses.sigmoid import SigmoidLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.wrappers.grad_cache import GradCache

N, IN, OUT = 22, 6, 4


def _encoder(seed: int, dropout: float = 0.0, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(IN, 8)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, OUT)]
    return nn.Sequential(*layers).double()


def _data(seed: int = 0, n: int = N) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g, dtype=torch.float64), torch.arange(n // 2).repeat(2)


def _grads(*modules: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters() if p.requires_grad]  # type: ignore[union-attr]


def _assert_equal(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _chunked(encoder: nn.Module, inputs: Tensor, size: int) -> Tensor:
    """The reference: the encoder over the same chunks, with the graph (the same random draws as GradCache)."""
    return torch.cat([encoder(chunk) for chunk in inputs.split(size)])


@pytest.mark.parametrize("chunk_size", [1, 5, 11, 22, 50])
@pytest.mark.parametrize("make_loss", [lambda: NTXentLoss(0.2), SupConLoss, lambda: TripletMarginLoss(0.3)])
def test_gradients_equal_the_full_batch(chunk_size: int, make_loss: Callable[[], nn.Module]) -> None:
    inputs, labels = _data()
    encoder, loss_fn = _encoder(0), make_loss()
    expected_loss = loss_fn(encoder(inputs), labels)
    expected_loss.backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    loss = GradCache(encoder, loss_fn, chunk_size)(inputs, labels)
    assert not loss.requires_grad and loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
    _assert_equal(_grads(encoder), expected)


@pytest.mark.parametrize("chunk_size", [4, 9])
def test_dropout_is_replayed_exactly(chunk_size: int) -> None:
    inputs, labels = _data(1)
    encoder, loss_fn = _encoder(1, dropout=0.4), NTXentLoss(0.2)
    torch.manual_seed(123)
    expected_loss = loss_fn(_chunked(encoder, inputs, chunk_size), labels)
    expected_loss.backward()
    expected, state_after = _grads(encoder), torch.get_rng_state()
    encoder.zero_grad()
    torch.manual_seed(123)
    loss = GradCache(encoder, loss_fn, chunk_size)(inputs, labels)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
    _assert_equal(_grads(encoder), expected)
    # the random stream advanced as by one chunked pass, not two
    assert torch.equal(torch.get_rng_state(), state_after)
    # and the replay matters: the gradients of a second, unseeded pass differ
    encoder.zero_grad()
    GradCache(encoder, loss_fn, chunk_size)(inputs, labels)
    assert any(not torch.allclose(a, b) for a, b in zip(_grads(encoder), expected, strict=True))


def test_buffers_are_updated_once_per_chunk() -> None:
    inputs, labels = _data(2)
    reference, cached = _encoder(2, batch_norm=True), _encoder(2, batch_norm=True)
    loss_fn = NTXentLoss(0.2)
    loss_fn(_chunked(reference, inputs, 8), labels).backward()
    GradCache(cached, loss_fn, 8)(inputs, labels)
    for (name, a), (_, b) in zip(reference.named_buffers(), cached.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    # batch statistics are per chunk: equal to the chunked pass, not to the full batch
    _assert_equal(_grads(cached), _grads(reference))


def test_two_towers_and_learnable_loss_parameters() -> None:
    images, _ = _data(3)
    texts = torch.randn(N, IN + 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    image_tower = _encoder(3)
    torch.manual_seed(4)
    text_tower = nn.Sequential(nn.Linear(IN + 2, OUT)).double()
    labels = torch.arange(N)
    loss_fn = SigmoidLoss(temperature=3.0, bias=-2.0).double()
    expected_loss = loss_fn(image_tower(images), labels, ref_emb=text_tower(texts), ref_labels=labels.clone())
    expected_loss.backward()
    expected = _grads(image_tower, text_tower, loss_fn)
    for module in (image_tower, text_tower, loss_fn):
        module.zero_grad()
    cache = GradCache(image_tower, loss_fn, chunk_size=6, ref_encoder=text_tower)
    loss = cache(images, labels, ref_inputs=texts, ref_labels=labels.clone())
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
    _assert_equal(_grads(image_tower, text_tower, loss_fn), expected)


def test_shared_encoder_for_the_reference_batch() -> None:
    inputs, labels = _data(5)
    encoder, loss_fn = _encoder(5), NTXentLoss(0.3)
    half = N // 2
    loss_fn(encoder(inputs[:half]), labels[:half], ref_emb=encoder(inputs[half:]), ref_labels=labels[half:]).backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    GradCache(encoder, loss_fn, 4)(inputs[:half], labels[:half], ref_inputs=inputs[half:], ref_labels=labels[half:])
    _assert_equal(_grads(encoder), expected)


def test_miner_sees_the_whole_batch() -> None:
    inputs, labels = _data(6)
    encoder, loss_fn, miner = _encoder(6), TripletMarginLoss(0.3), TripletMarginMiner(margin=0.5)
    embeddings = encoder(inputs)
    mined = miner(embeddings.detach(), labels)
    assert mined[0].numel() > 0
    loss_fn(embeddings, labels, mined).backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    GradCache(encoder, loss_fn, 5, miner=miner)(inputs, labels)
    _assert_equal(_grads(encoder), expected)
    # given indices take precedence over the miner
    encoder.zero_grad()
    GradCache(encoder, loss_fn, 5, miner=miner)(inputs, labels, indices_tuple=mined)
    _assert_equal(_grads(encoder), expected)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(IN, OUT).double(), nn.Linear(2, OUT).double()

    def forward(self, x: Tensor, extra: Tensor) -> Tensor:
        return self.a(x) * self.b(extra)


@pytest.mark.parametrize("container", ["tuple", "list", "dict"])
def test_input_containers(container: str) -> None:
    inputs, labels = _data(7)
    extra = torch.randn(N, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.manual_seed(7)
    encoder, loss_fn = _TwoInputs(), NTXentLoss(0.2)
    loss_fn(encoder(inputs, extra), labels).backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    batch = {"tuple": (inputs, extra), "list": [inputs, extra], "dict": {"x": inputs, "extra": extra}}[container]
    GradCache(encoder, loss_fn, 6)(batch, labels)  # type: ignore[arg-type]
    _assert_equal(_grads(encoder), expected)


def test_gradients_accumulate_like_backward() -> None:
    inputs, labels = _data(9)
    encoder, loss_fn = _encoder(9), NTXentLoss(0.2)
    cache = GradCache(encoder, loss_fn, 7)
    cache(inputs, labels)
    once = _grads(encoder)
    cache(inputs, labels)
    _assert_equal(_grads(encoder), [2 * g for g in once])


def test_errors() -> None:
    encoder, loss_fn = _encoder(0), NTXentLoss()
    inputs, labels = _data()
    with pytest.raises(ValueError, match=re.escape("GradCache: `chunk_size` must be an integer >= 1, got 0.")):
        GradCache(encoder, loss_fn, 0)
    with pytest.raises(TypeError, match=re.escape("GradCache: `encoder` must be an nn.Module, got function.")):
        GradCache(lambda x: x, loss_fn, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("GradCache: `miner` must be None or an nn.Module, got str.")):
        GradCache(encoder, loss_fn, 4, miner="hard")  # type: ignore[arg-type]
    cache = GradCache(encoder, loss_fn, 4)
    rule = "a tensor, a tuple or list of tensors, or a mapping of names to tensors"
    with pytest.raises(TypeError, match=re.escape(f"GradCache: `inputs` must be {rule}, got ndarray.")):
        cache(inputs.numpy(), labels)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=re.escape("GradCache: `inputs` must be tensors of one non-zero batch size (first dimension)")
    ):
        cache((inputs, inputs[:3]), labels)
    flat = GradCache(nn.Flatten(0).double(), loss_fn, 4)
    with pytest.raises(
        TypeError, match=re.escape("GradCache: `encoder` must be a module returning (chunk, D) embeddings, got tensor")
    ):
        flat(inputs, labels)
