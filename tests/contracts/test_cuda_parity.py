"""Every registered distance, regularizer, loss and miner gives on a CUDA device what it gives on the CPU.

Both sides run in float64 from the same inputs and the same parameters (the CPU module's state is copied to the
device), so the only differences left are the order of floating-point sums. Losses compare value and every
gradient; miners compare the mined tuples. Parametrised over the registries found at collection time, like the
other contracts. These run only where a CUDA device is present.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dmlkit.types import Pairs
from tests.contracts.test_registered_classes import BATCH, CLASSES, DIM, _construct, _of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TOLERANCE = {"rtol": 1e-7, "atol": 1e-9}
# miners whose draws come from the device's own generator: CPU and CUDA draw different numbers
RANDOM_MINERS = {"distance_weighted", "uniform_histogram"}


def _inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    ref = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    labels = torch.arange(CLASSES).repeat(BATCH // CLASSES)
    return emb.to(device), ref.to(device), labels.to(device)


def _twins(cls: type) -> tuple[Any, Any]:
    """The module built once on the CPU in float64, and an exact copy of it on the CUDA device."""
    torch.manual_seed(0)
    on_cpu = _construct(cls)
    if isinstance(on_cpu, torch.nn.Module):
        on_cpu = on_cpu.double()
    on_cuda = copy.deepcopy(on_cpu)
    if isinstance(on_cuda, torch.nn.Module):
        on_cuda = on_cuda.to(CUDA)
    return on_cpu, on_cuda


def _close(cpu_value: torch.Tensor, cuda_value: torch.Tensor, what: str) -> None:
    assert cuda_value.device.type == "cuda", f"{what} came back on {cuda_value.device}"
    torch.testing.assert_close(cuda_value.cpu(), cpu_value, **TOLERANCE, msg=lambda m: f"{what}: {m}")


@_of("distances")
def test_distance_on_cuda_equals_cpu(package: str, key: str, cls: type) -> None:
    on_cpu, on_cuda = _twins(cls)
    emb, ref, _ = _inputs(CPU)
    emb_d, ref_d, _ = _inputs(CUDA)
    _close(on_cpu(emb, ref), on_cuda(emb_d, ref_d), "query-by-reference matrix")
    _close(on_cpu(emb), on_cuda(emb_d), "matrix of the batch against itself")


@_of("regularizers")
def test_regularizer_on_cuda_equals_cpu(package: str, key: str, cls: type) -> None:
    on_cpu, on_cuda = _twins(cls)
    emb = _inputs(CPU)[0].requires_grad_()
    emb_d = _inputs(CUDA)[0].requires_grad_()
    value, value_d = on_cpu(emb), on_cuda(emb_d)
    _close(value, value_d, "value")
    value.backward()
    value_d.backward()
    assert emb.grad is not None and emb_d.grad is not None
    _close(emb.grad, emb_d.grad, "gradient")


def _loss_value(loss_fn: Any, cls: type, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    emb, ref, labels = _inputs(device)
    emb.requires_grad_()
    # the same random views, if the loss draws any
    torch.manual_seed(2)
    if device.type == "cuda":
        torch.cuda.manual_seed(2)
    if cls.requires_labels:
        out = loss_fn(emb, labels)
    elif cls.supports_ref_emb:
        out = loss_fn(emb, ref_emb=ref)
    else:
        out = loss_fn(emb)
    return out, emb


@_of("losses")
def test_loss_on_cuda_equals_cpu(package: str, key: str, cls: type) -> None:
    on_cpu, on_cuda = _twins(cls)
    value, emb = _loss_value(on_cpu, cls, CPU)
    value_d, emb_d = _loss_value(on_cuda, cls, CUDA)
    _close(value, value_d, "loss")
    value.backward()
    value_d.backward()
    assert emb.grad is not None and emb_d.grad is not None
    _close(emb.grad, emb_d.grad, "gradient of the embeddings")
    for (name, p), p_d in zip(on_cpu.named_parameters(), on_cuda.parameters(), strict=True):
        if p.grad is None:
            assert p_d.grad is None or not bool(p_d.grad.any()), f"{name} has a gradient on CUDA only"
        else:
            assert p_d.grad is not None, f"{name} has a gradient on the CPU only"
            _close(p.grad, p_d.grad, f"gradient of {name}")


@_of("miners")
def test_miner_on_cuda_equals_cpu(package: str, key: str, cls: type) -> None:
    on_cpu, on_cuda = _twins(cls)
    emb, ref, labels = _inputs(CPU)
    emb_d, ref_d, labels_d = _inputs(CUDA)
    torch.manual_seed(3)
    mined = on_cpu(emb, labels)
    torch.manual_seed(3)
    torch.cuda.manual_seed(3)
    mined_d = on_cuda(emb_d, labels_d)
    assert type(mined) is type(mined_d)
    if key in RANDOM_MINERS:
        return  # the draws differ between the generators; their validity is the other contracts' business
    names = (
        ("anchors_pos", "positives", "anchors_neg", "negatives")
        if isinstance(mined, Pairs)
        else ("anchors", "positives", "negatives")
    )
    for name, part, part_d in zip(names, mined, mined_d, strict=True):
        assert part_d.device.type == "cuda", f"{name} came back on {part_d.device}"
        assert torch.equal(part, part_d.cpu()), f"{name} differs: CPU {part.tolist()}, CUDA {part_d.tolist()}"
