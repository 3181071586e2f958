"""Small embedding networks for tabular features."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_range, message

__all__ = ["MLP"]


class MLP(nn.Module):
    """A multi-layer perceptron that maps feature vectors to embeddings.

    Each hidden layer is ``Linear -> [BatchNorm1d] -> ReLU``; the last layer is a plain ``Linear`` so that
    embeddings can take any sign. With ``normalize`` the output is scaled to unit L2 norm, which puts the
    embeddings on the hypersphere as in FaceNet (Schroff et al., 2015, arXiv:1503.03832).

    Args:
        in_features: size of each input vector, ``>= 1``.
        hidden: sizes of the hidden layers (may be empty for a linear embedder), each ``>= 1``.
        out_features: embedding size, ``>= 1``.
        normalize: L2-normalise the output.
        batch_norm: insert ``BatchNorm1d`` after each hidden ``Linear``.

    Example:
        >>> model = MLP(64, hidden=(128,), out_features=32, normalize=True)
        >>> out = model(torch.rand(5, 64))
        >>> tuple(out.shape), bool(torch.allclose(out.norm(dim=1), torch.ones(5)))
        ((5, 32), True)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128,),
        out_features: int = 32,
        normalize: bool = False,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, "in_features", in_features, low=1, integer=True)
        check_range(name, "out_features", out_features, low=1, integer=True)
        sizes = list(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(message(name, "hidden", "a sequence of positive integers", hidden))
        self.in_features = in_features
        self.hidden = tuple(sizes)
        self.out_features = out_features
        self.normalize = normalize
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        width = in_features
        for size in sizes:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of shape ``(batch_size, in_features)`` into ``(batch_size, out_features)``."""
        out = self.layers(x)
        return F.normalize(out, dim=1) if self.normalize else out
