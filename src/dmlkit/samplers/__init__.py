"""Samplers (layer 5): choose which dataset items form each batch."""

from __future__ import annotations

from torch.utils.data import Sampler

from ..registry import Registry
from .m_per_class import MPerClassSampler

__all__ = ["MPerClassSampler", "SAMPLERS"]

SAMPLERS: Registry[Sampler] = Registry(
    "sampler",
    {
        "m_per_class": MPerClassSampler,
    },
)
