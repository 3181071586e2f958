"""Random views of feature vectors for instance discrimination.

Two independently perturbed views of the same sample form a positive pair and every other sample of the batch
is a negative: the surrogate task of Exemplar CNNs (Dosovitskiy et al., 2014, arXiv:1406.6909) and SimCLR
(Chen et al., 2020, arXiv:2002.05709). Solving it keeps the features that tell individual samples apart,
which a supervised loss on a few training classes would otherwise discard.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_range, message

__all__ = ["noisy_view"]


def noisy_view(
    features: Tensor,
    std: float,
    *,
    generator: torch.Generator | None = None,
    low: float | None = 0.0,
    high: float | None = 1.0,
) -> Tensor:
    """A copy of ``features`` with independent Gaussian noise of standard deviation ``std`` on every entry.

    The result is clipped to ``[low, high]`` (the valid range of pixel intensities by default; ``None``
    leaves that side open). With ``std == 0`` the result is a clipped copy of ``features``.

    Args:
        features: a floating-point tensor of any shape.
        std: standard deviation of the noise, ``>= 0``.
        generator: the source of randomness (the global generator when None); it may live on another device
            than ``features`` (the noise is drawn there and moved).
        low: smallest value kept, or None.
        high: largest value kept, or None; ``>= low`` when both are given.

    Returns:
        A tensor of the shape, dtype and device of ``features``.

    Raises:
        TypeError: ``features`` is not a floating-point tensor.
        ValueError: ``std`` is negative or not finite, or ``low > high``.

    Example:
        >>> x = torch.full((2, 3), 0.5)
        >>> view = noisy_view(x, 0.1, generator=torch.Generator().manual_seed(0))
        >>> view.shape == x.shape, bool(((view >= 0) & (view <= 1)).all()), bool((view != x).any())
        (True, True, True)
        >>> torch.equal(noisy_view(x, 0.0), x)
        True
    """
    owner = "noisy_view"
    if not isinstance(features, Tensor) or not features.is_floating_point():
        rule = "a floating-point tensor"
        raise TypeError(message(owner, "features", rule, features.dtype if isinstance(features, Tensor) else features))
    check_range(owner, "std", std, low=0.0)
    if not math.isfinite(std):
        raise ValueError(message(owner, "std", "finite", std))
    if low is not None and high is not None and low > high:
        raise ValueError(message(owner, "high", f">= `low` ({low})", high))
    view = features
    if std > 0:
        # drawn where the generator lives (a CPU generator serves GPU features too: the same views on any device)
        source = features.device if generator is None else generator.device
        noise = torch.randn(features.shape, generator=generator, dtype=features.dtype, device=source)
        view = features + std * noise.to(features.device)
    if low is None and high is None:
        return view if std > 0 else features.clone()
    return view.clamp(min=low, max=high)
