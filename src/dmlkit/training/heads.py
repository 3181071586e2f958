"""Small trainable heads for the outputs of a frozen encoder: linear, MLP and gated skip connection.

A head maps ``(batch, in_features)`` encoder outputs to ``(batch, out_features)`` embeddings. Trained on
cached encoder outputs (:class:`~dmlkit.training.embedding_cache.EmbeddingCache`), an epoch costs only the
head's forward and backward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_range, message

__all__ = ["LinearHead", "MLPHead", "SkipConnectionHead"]


def _check_sizes(owner: str, in_features: int, out_features: int | None, dropout: float) -> int:
    check_range(owner, "in_features", in_features, low=1, integer=True)
    if out_features is not None:
        check_range(owner, "out_features", out_features, low=1, integer=True)
    check_range(owner, "dropout", dropout, low=0, high=1, high_inclusive=False)
    return in_features if out_features is None else out_features


class LinearHead(nn.Module):
    """A linear map ``W x + b`` of the encoder output: the linear probe (Alain and Bengio, 2016,
    arXiv:1610.01644) used as an embedding head.

    Args:
        in_features: encoder output size, ``>= 1``.
        out_features: embedding size, ``>= 1``; None keeps ``in_features``.
        bias: learn the offset ``b``.
        dropout: dropout probability on the input, in ``[0, 1)``.
        normalize: scale each embedding to unit L2 norm.

    Example:
        >>> head = LinearHead(8, 4, normalize=True)
        >>> out = head(torch.randn(3, 8))
        >>> tuple(out.shape), bool(torch.allclose(out.norm(dim=1), torch.ones(3)))
        ((3, 4), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        out = _check_sizes(type(self).__name__, in_features, out_features, dropout)
        self.in_features, self.out_features = in_features, out
        self.normalize = bool(normalize)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``(batch, in_features)`` encoder outputs into ``(batch, out_features)``."""
        out = self.linear(self.dropout(x))
        return F.normalize(out, dim=1) if self.normalize else out


class MLPHead(nn.Module):
    """A multi-layer perceptron head: ``[Dropout -> Linear -> ReLU] * len(hidden) -> Dropout -> Linear``.

    The projection head of SimCLR (Chen, Kornblith, Norouzi and Hinton, 2020, arXiv:2002.05709) with any
    number of hidden layers.

    Args:
        in_features: encoder output size, ``>= 1``.
        hidden: hidden layer sizes, each ``>= 1`` (empty: a linear head).
        out_features: embedding size, ``>= 1``; None keeps ``in_features``.
        dropout: dropout probability before each ``Linear``, in ``[0, 1)``.
        normalize: scale each embedding to unit L2 norm.

    Example:
        >>> head = MLPHead(8, hidden=(16, 16), out_features=4)
        >>> tuple(head(torch.randn(3, 8)).shape), len([m for m in head.modules() if isinstance(m, torch.nn.Linear)])
        ((3, 4), 3)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (512,),
        out_features: int | None = None,
        dropout: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        out = _check_sizes(name, in_features, out_features, dropout)
        sizes = list(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
            raise ValueError(message(name, "hidden", "a sequence of positive integers", hidden))
        self.in_features, self.hidden, self.out_features = in_features, tuple(sizes), out
        self.normalize = bool(normalize)
        layers: list[nn.Module] = []
        width = in_features
        for size in sizes:
            layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.ReLU()]
            width = size
        layers += [nn.Dropout(dropout), nn.Linear(width, out)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``(batch, in_features)`` encoder outputs into ``(batch, out_features)``."""
        out = self.layers(x)
        return F.normalize(out, dim=1) if self.normalize else out


class SkipConnectionHead(nn.Module):
    """A gated residual head ``y = x + g * f(x)``: the encoder output plus a learned, gated correction.

    ``f`` is ``num_layers`` square ``Linear`` layers with ReLU between them (dropout before each), and ``g``
    a learned gate vector, one entry per feature, initialised to 0 (ReZero; Bachlechner, Majumder, Mao,
    Cottrell and McAuley, 2020, arXiv:2003.04887). The head therefore starts as the identity and training
    begins from the frozen encoder's own embeddings, moving away only as far as the loss asks; the
    residual form follows He, Zhang, Ren and Sun, 2016, arXiv:1512.03385.

    Args:
        in_features: encoder output size (also the output size), ``>= 1``.
        num_layers: depth of ``f``, ``>= 1``.
        dropout: dropout probability before each ``Linear`` of ``f``, in ``[0, 1)``.
        normalize: scale each embedding to unit L2 norm.

    Example:
        >>> head = SkipConnectionHead(8, num_layers=2)
        >>> x = torch.randn(3, 8)
        >>> bool(torch.equal(head(x), x))  # the identity until trained
        True
    """

    def __init__(self, in_features: int, num_layers: int = 1, dropout: float = 0.0, normalize: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        _check_sizes(name, in_features, None, dropout)
        check_range(name, "num_layers", num_layers, low=1, integer=True)
        self.in_features = self.out_features = in_features
        self.num_layers = num_layers
        self.normalize = bool(normalize)
        layers: list[nn.Module] = []
        for i in range(num_layers):
            if i:
                layers.append(nn.ReLU())
            layers += [nn.Dropout(dropout), nn.Linear(in_features, in_features)]
        self.branch = nn.Sequential(*layers)
        self.gate = nn.Parameter(torch.zeros(in_features))

    def forward(self, x: Tensor) -> Tensor:
        """``x + gate * branch(x)`` for ``(batch, in_features)`` encoder outputs."""
        out = x + self.gate * self.branch(x)
        return F.normalize(out, dim=1) if self.normalize else out
