"""The handwritten digits bundled with scikit-learn: a small, offline data set for demos and tests."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["load_digits"]

#: pixel intensities in scikit-learn's digits are integers from 0 to 16.
_MAX_INTENSITY = 16.0


def load_digits() -> tuple[Tensor, Tensor]:
    """Load the 1,797 8x8 handwritten digits shipped with scikit-learn (Alpaydin and Kaynak, 1998, UCI).

    No download is needed: the data come with scikit-learn, which is imported only when this function runs.

    Returns:
        ``(features, labels)``: features of shape ``(1797, 64)``, ``float32`` in ``[0, 1]``; labels of shape
        ``(1797,)``, ``int64`` digits ``0``-``9``.

    Example:
        >>> features, labels = load_digits()
        >>> tuple(features.shape), features.dtype, labels.dtype
        ((1797, 64), torch.float32, torch.int64)
        >>> float(features.min()), float(features.max()), sorted(set(labels.tolist())) == list(range(10))
        (0.0, 1.0, True)
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    features = torch.as_tensor(bunch.data, dtype=torch.float32) / _MAX_INTENSITY
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return features, labels
