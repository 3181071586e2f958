"""The chunked reductions of losses/functional.py against plain per-term reductions (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from dmlkit.losses.functional import FusedReduction, masked_hinge, reduce_pair_terms


def _plain(values: torch.Tensor, reduction: FusedReduction) -> torch.Tensor:
    if reduction is FusedReduction.SUM:
        return values.sum()
    if reduction is FusedReduction.NONZERO:
        positive = values[values > 0]
        return positive.mean() if positive.numel() else values.sum() * 0
    return values.mean()


@pytest.mark.parametrize("reduction", list(FusedReduction))
@pytest.mark.parametrize("above", [False, True])
@pytest.mark.parametrize("cells", [6, 1 << 22])  # several row blocks, or one
def test_masked_hinge_equals_the_listed_hinge(reduction: FusedReduction, above: bool, cells: int) -> None:
    g = torch.Generator().manual_seed(0)
    mat = torch.rand(7, 5, generator=g, dtype=torch.float64) * 2
    keep = torch.rand(7, 5, generator=g) > 0.4
    threshold = 0.9
    fused_input = mat.clone().requires_grad_(True)
    plain_input = mat.clone().requires_grad_(True)
    fused = masked_hinge(fused_input, keep, threshold, above, reduction, cells=cells)
    listed = plain_input[keep]
    plain = _plain((listed - threshold if above else threshold - listed).clamp_min(0), reduction)
    fused.backward()
    plain.backward()
    assert fused.item() > 0
    assert torch.allclose(fused, plain, rtol=1e-12)
    assert torch.allclose(fused_input.grad, plain_input.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", list(FusedReduction))
def test_reduce_pair_terms_equals_the_listed_terms(reduction: FusedReduction) -> None:
    g = torch.Generator().manual_seed(1)
    mat = torch.randn(9, 4, generator=g, dtype=torch.float64)
    keep = torch.rand(9, 4, generator=g) > 0.5
    fused_input = mat.clone().requires_grad_(True)
    plain_input = mat.clone().requires_grad_(True)
    fused = reduce_pair_terms(lambda v: torch.nn.functional.softplus(v) - 0.5, fused_input, keep, reduction, cells=8)
    plain = _plain(torch.nn.functional.softplus(plain_input[keep]) - 0.5, reduction)
    fused.backward()
    plain.backward()
    assert torch.allclose(fused, plain, rtol=1e-12)
    assert torch.allclose(fused_input.grad, plain_input.grad, rtol=1e-12, atol=1e-15)


def test_nothing_to_reduce_is_a_connected_zero() -> None:
    mat = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    nothing = torch.zeros(3, 3, dtype=torch.bool)
    for value in (
        masked_hinge(mat, nothing, 0.5, False, FusedReduction.NONZERO),
        reduce_pair_terms(lambda v: v, mat, nothing, FusedReduction.MEAN),
    ):
        value.backward()
        assert value.item() == 0.0 and mat.grad is not None and not mat.grad.any()
        mat.grad = None
