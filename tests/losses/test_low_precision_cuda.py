"""Classification and proxy losses under ``torch.autocast("cuda")`` in float16 and bfloat16: finite float32 values
and finite gradients at embedding norms 1e4 and 1e-8 and at angles 0 and pi to a class weight (the inputs where
half-precision ArcFace-type losses are reported to return NaN). The CPU bfloat16 twin of each check lives in the
loss's own test file; these run only where a CUDA device is present."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from dmlkit.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CosFaceLoss,
    LargeMarginSoftmaxLoss,
    ManifoldLoss,
    NormalizedSoftmaxLoss,
    P2SGradLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    SoftTripleLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)
from dmlkit.losses.class_weights import BaseClassWeightLoss
from tests.losses.proxy_cases import hard_precision_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CLASSES, DIM = 4, 16
MAKERS: dict[str, Callable[[], BaseClassWeightLoss]] = {
    "LargeMarginSoftmaxLoss": lambda: LargeMarginSoftmaxLoss(CLASSES, DIM),
    "ArcFaceLoss": lambda: ArcFaceLoss(CLASSES, DIM),
    "SubCenterArcFaceLoss": lambda: SubCenterArcFaceLoss(CLASSES, DIM),
    "CosFaceLoss": lambda: CosFaceLoss(CLASSES, DIM),
    "SphereFaceLoss": lambda: SphereFaceLoss(CLASSES, DIM),
    "NormalizedSoftmaxLoss": lambda: NormalizedSoftmaxLoss(CLASSES, DIM),
    "ProxyNCALoss": lambda: ProxyNCALoss(CLASSES, DIM),
    "ProxyAnchorLoss": lambda: ProxyAnchorLoss(CLASSES, DIM),
    "SoftTripleLoss": lambda: SoftTripleLoss(CLASSES, DIM),
    "ManifoldLoss": lambda: ManifoldLoss(DIM, K=3),
    "P2SGradLoss": lambda: P2SGradLoss(DIM, CLASSES),
    "AdaFaceLoss": lambda: AdaFaceLoss(CLASSES, DIM),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_finite_under_cuda_autocast(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    loss_fn = MAKERS[name]().cuda()
    base = hard_precision_inputs(loss_fn.class_weights().cpu(), DIM).cuda()
    labels = (torch.arange(len(base)) % (3 if name == "ManifoldLoss" else CLASSES)).cuda()
    for input_dtype in (torch.float32, dtype):
        rows = base
        if input_dtype == torch.float16:
            # float16 holds no norm of 1e-8 (its smallest step is 6e-8) and the true gradient there, ~1/norm,
            # is beyond its range (an overflow that GradScaler answers by skipping the step): use norm 1e-2
            rows = torch.cat([base[:4], base[4:] * 1e6])
        emb = rows.to(input_dtype).detach().clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            loss = loss_fn(emb, labels)
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss)), (input_dtype, loss)
        loss.backward()
        assert emb.grad is not None and bool(torch.isfinite(emb.grad).all()), input_dtype
        for p in loss_fn.parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all()), (input_dtype, p.shape)
        loss_fn.zero_grad()
