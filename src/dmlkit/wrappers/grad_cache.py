"""Gradient caching: a loss over a batch larger than the encoder's activations fit in memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import Described, check_range, message

__all__ = ["GradCache"]

_NAME = "GradCache"

#: a batch of encoder inputs: one tensor (``encoder(x)``), a tuple or list of tensors (``encoder(*xs)``) or a
#: mapping of names to tensors (``encoder(**xs)``), every tensor with the batch along its first dimension.
Inputs = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


class GradCache(nn.Module):
    """Gradient caching (Gao, Zhang, Han and Callan, 2021, "Scaling Deep Contrastive Learning Batch Size under
    Memory Limited Setup", arXiv:2101.06983): the gradients of a loss over one large batch, with the encoder's
    activations held for ``chunk_size`` inputs at a time.

    Calling it runs, for a batch of ``N`` inputs:

    1. the encoder on chunks of ``chunk_size`` inputs without building the graph, and concatenates the
       ``(N, D)`` embeddings;
    2. the loss (with the miner's pairs or triplets, if a miner is given) on all ``N`` embeddings, and its
       backward pass, which gives ``d loss / d embeddings`` (and the gradients of the loss's own parameters);
    3. the encoder again on each chunk, with the graph, and ``embeddings_chunk.backward(its gradient)``, which
       accumulates the encoder's parameter gradients chunk by chunk.

    By the chain rule the parameter gradients equal those of one forward and backward pass over the batch split
    into the same chunks: exactly those of the full batch for an encoder whose output for an input does not
    depend on the other inputs of its chunk (no batch normalisation in training mode). Random operations
    (dropout) draw the same numbers in step 3 as in step 1: the random state (CPU, and CUDA of the devices
    involved) is saved before each chunk and replayed within ``torch.random.fork_rng``, so the global random
    state afterwards is that of step 1. The encoder's buffers (e.g. running statistics) are restored before
    step 3, so they are updated once per chunk as in step 1. The gradients are accumulated into ``.grad`` as
    ``loss.backward()`` would; call the optimizer afterwards.

    Memory is the ``N`` embeddings and their gradients plus one chunk's activations, instead of ``N`` inputs'
    activations; the price is a second forward pass of the encoder. Combine with a loss's tiled path
    (``chunk_size`` of the loss) to keep the loss's own memory linear in ``N`` too.

    Args:
        encoder: the model mapping a chunk of inputs to ``(chunk, D)`` embeddings.
        loss: the loss, called as ``loss(embeddings, labels, indices_tuple)`` (plus ``ref_emb=``, ``ref_labels=``
            with reference inputs), e.g. any dmlkit metric loss.
        chunk_size: inputs per encoder call, an integer ``>= 1``.
        miner: optional miner, called as ``miner(embeddings, labels)`` (plus ``ref_emb``, ``ref_labels``) on the
            embeddings without their graph, when :meth:`forward` gets no ``indices_tuple``.
        ref_encoder: the encoder of ``ref_inputs`` when they are another modality (e.g. a text tower for images'
            captions, as in CLIP-style training); default ``encoder``.

    Example:
        >>> from dmlkit.losses import NTXentLoss
        >>> encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4))
        >>> inputs, labels = torch.randn(32, 8), torch.arange(16).repeat(2)
        >>> loss = GradCache(encoder, NTXentLoss(temperature=0.1), chunk_size=8)(inputs, labels)
        >>> loss.requires_grad, encoder[0].weight.grad.shape
        (False, torch.Size([16, 8]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        loss: nn.Module,
        chunk_size: int,
        miner: nn.Module | None = None,
        ref_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        checks: tuple[tuple[str, object, bool], ...] = (
            ("encoder", encoder, False),
            ("loss", loss, False),
            ("miner", miner, True),
            ("ref_encoder", ref_encoder, True),
        )
        for arg, value, optional in checks:
            if not isinstance(value, nn.Module) and not (optional and value is None):
                rule = "None or an nn.Module" if optional else "an nn.Module"
                raise TypeError(message(_NAME, arg, rule, Described(type(value).__name__)))
        check_range(_NAME, "chunk_size", chunk_size, low=1, integer=True)
        self.encoder = encoder
        self.loss = loss
        self.chunk_size = chunk_size
        self.miner = miner
        self.ref_encoder = ref_encoder

    def forward(
        self,
        inputs: Inputs,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_inputs: Inputs | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """Accumulate the gradients of ``loss(encoder(inputs), labels, ...)`` into the parameters, chunk by chunk.

        Args:
            inputs: the batch (see :data:`Inputs`).
            labels: ``(N,)`` labels, passed to the loss (and the miner).
            indices_tuple: pairs or triplets for the loss, instead of the miner's.
            ref_inputs: an optional reference batch, embedded by ``ref_encoder`` and passed as ``ref_emb``.
            ref_labels: the reference batch's labels.

        Returns:
            The loss, detached (its gradients are already in the parameters' ``.grad``).
        """
        towers = [(self.encoder, inputs, "inputs")]
        if ref_inputs is not None:
            towers.append(
                (self.ref_encoder if self.ref_encoder is not None else self.encoder, ref_inputs, "ref_inputs")
            )
        caches = [_embed(encoder, batch, self.chunk_size, arg) for encoder, batch, arg in towers]
        embeddings = caches[0].embeddings
        reference: dict[str, Any] = {}
        if len(caches) == 2:
            reference = {"ref_emb": caches[1].embeddings, "ref_labels": ref_labels}
        with torch.enable_grad():
            if indices_tuple is None and self.miner is not None:
                detached = {key: (value.detach() if key == "ref_emb" else value) for key, value in reference.items()}
                indices_tuple = self.miner(embeddings.detach(), labels, **detached)
            loss = self.loss(embeddings, labels, indices_tuple, **reference)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(message(_NAME, "loss", "a module returning a scalar tensor", Described(repr(loss))))
            if loss.requires_grad:
                loss.backward()
        for (encoder, _, _), cache in zip(towers, caches, strict=True):
            _backpropagate(encoder, cache)
        return loss.detach()

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"


@dataclass
class _Cache:
    """One tower's first pass: its chunks, the random state before each, its buffers before the first, and the
    concatenated embeddings (a leaf that receives the loss's gradient)."""

    chunks: list[Inputs]
    states: list[_RandomState]
    buffers: dict[str, Tensor]
    embeddings: Tensor


class _RandomState:
    """The CPU random state and that of the given CUDA devices."""

    def __init__(self, devices: list[int]) -> None:
        self.devices = devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(device) for device in devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(state, device)


def _tensors(batch: Inputs) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    return list(batch.values()) if isinstance(batch, Mapping) else list(batch)


def _split(batch: Inputs, size: int, arg: str) -> list[Inputs]:
    tensors = _tensors(batch)
    valid = (
        isinstance(batch, (Tensor, Mapping, tuple, list))
        and len(tensors) > 0
        and all(isinstance(t, Tensor) and t.ndim >= 1 for t in tensors)
    )
    if not valid:
        rule = "a tensor, a tuple or list of tensors, or a mapping of names to tensors"
        raise TypeError(message(_NAME, arg, rule, Described(type(batch).__name__)))
    lengths = sorted({t.shape[0] for t in tensors})
    if len(lengths) != 1 or lengths[0] == 0:
        raise ValueError(message(_NAME, arg, "tensors of one non-zero batch size (first dimension)", lengths))
    if isinstance(batch, Tensor):
        return list(batch.split(size))
    if isinstance(batch, Mapping):
        keys = list(batch)
        parts = [batch[key].split(size) for key in keys]
        return [dict(zip(keys, chunk, strict=True)) for chunk in zip(*parts, strict=True)]
    return [tuple(chunk) for chunk in zip(*(t.split(size) for t in batch), strict=True)]


def _call(encoder: Callable[..., Any], chunk: Inputs) -> Tensor:
    if isinstance(chunk, Tensor):
        out = encoder(chunk)
    elif isinstance(chunk, Mapping):
        out = encoder(**chunk)
    else:
        out = encoder(*chunk)
    if not isinstance(out, Tensor) or out.ndim != 2:
        got = Described(f"tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__)
        raise TypeError(message(_NAME, "encoder", "a module returning (chunk, D) embeddings", got))
    return out


def _cuda_devices(encoder: nn.Module, batch: Inputs) -> list[int]:
    devices = {t.device.index for t in _tensors(batch) if t.device.type == "cuda"}
    devices |= {p.device.index for p in encoder.parameters() if p.device.type == "cuda"}
    return sorted(d if d is not None else torch.cuda.current_device() for d in devices)


def _embed(encoder: nn.Module, batch: Inputs, size: int, arg: str) -> _Cache:
    chunks = _split(batch, size, arg)
    devices = _cuda_devices(encoder, batch)
    buffers = {name: buffer.detach().clone() for name, buffer in encoder.named_buffers()}
    states, outputs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RandomState(devices))
            outputs.append(_call(encoder, chunk))
    return _Cache(chunks, states, buffers, torch.cat(outputs).requires_grad_())


def _backpropagate(encoder: nn.Module, cache: _Cache) -> None:
    grad = cache.embeddings.grad
    if grad is None:  # the loss does not depend on these embeddings
        return
    with torch.no_grad():
        for name, buffer in encoder.named_buffers():
            buffer.copy_(cache.buffers[name])
    start = 0
    for chunk, state in zip(cache.chunks, cache.states, strict=True):
        with torch.random.fork_rng(devices=state.devices):
            state.restore()
            with torch.enable_grad():
                out = _call(encoder, chunk)
        if out.requires_grad:  # an encoder without trainable parameters has nothing to accumulate
            out.backward(grad[start : start + out.shape[0]])
        start += out.shape[0]
