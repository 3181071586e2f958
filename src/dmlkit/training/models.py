"""Embedding networks: an MLP for feature vectors, a small CNN for 28x28 images, and user modules by import path."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_range, message

__all__ = ["MLP", "SmallCNN", "import_module_class", "build_model"]


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


class SmallCNN(nn.Module):
    """A small convolutional embedder for 28x28 single-channel images (MNIST, Fashion-MNIST).

    Two blocks of ``Conv3x3 -> BatchNorm -> ReLU -> MaxPool2`` (``channels`` and ``2 * channels`` filters;
    28 -> 14 -> 7), then ``Linear(7 * 7 * 2 * channels, hidden) -> ReLU -> Linear(hidden, out_features)``;
    LeNet's layout (LeCun et al., 1998) with batch normalisation (Ioffe and Szegedy, 2015, arXiv:1502.03167).
    Inputs of shape ``(N, 784)`` or ``(N, 28, 28)`` are reshaped to ``(N, 1, 28, 28)``.

    Args:
        out_features: embedding size, ``>= 1``.
        channels: filters of the first block, ``>= 1``.
        hidden: width of the hidden linear layer, ``>= 1``.
        normalize: L2-normalise the output.
        in_channels: image channels, ``>= 1``.

    Example:
        >>> model = SmallCNN(out_features=16)
        >>> tuple(model(torch.rand(3, 1, 28, 28)).shape), tuple(model(torch.rand(3, 784)).shape)
        ((3, 16), (3, 16))
    """

    def __init__(
        self,
        out_features: int = 64,
        channels: int = 32,
        hidden: int = 128,
        normalize: bool = False,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("out_features", out_features), ("channels", channels), ("hidden", hidden),
                           ("in_channels", in_channels)):
            check_range(name, arg, value, low=1, integer=True)
        self.out_features, self.channels, self.hidden = out_features, channels, hidden
        self.normalize, self.in_channels = normalize, in_channels

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, channels), *block(channels, 2 * channels))
        self.head = nn.Sequential(nn.Linear(7 * 7 * 2 * channels, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``(N, C, 28, 28)`` (or flat ``(N, C*784)``) into ``(N, out_features)``."""
        if x.ndim != 4:
            x = x.reshape(len(x), self.in_channels, 28, 28)
        out = self.head(torch.flatten(self.features(x), 1))
        return F.normalize(out, dim=1) if self.normalize else out


def import_module_class(path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named by ``"package.module:Class"`` (or ``"package.module.Class"``).

    Raises:
        ValueError: a malformed path. ImportError: the module cannot be imported (its message says why).
        KeyError: the module has no such attribute. TypeError: the attribute is not an ``nn.Module`` class.

    Example:
        >>> import_module_class("torch.nn:Linear")
        <class 'torch.nn.modules.linear.Linear'>
    """
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr or (sep == "." and not attr.isidentifier()):
        raise ValueError(message("model", "name", 'an import path "package.module:Class"', path))
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise KeyError(f"model: module {module_name!r} has no attribute {attr!r} (from {path!r}).")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(message("model", "name", "the import path of an nn.Module subclass", path))
    return cls


def build_model(name: str, in_shape: Sequence[int], embedding_size: int, params: Mapping[str, Any]) -> nn.Module:
    """The embedding network named by a configuration: ``"mlp"``, ``"cnn"`` or an import path.

    ``"mlp"`` takes ``hidden``, ``normalize``, ``batch_norm`` from ``params`` and the input width from
    ``in_shape`` (flattened); ``"cnn"`` takes :class:`SmallCNN`'s arguments; an import path is called as
    ``cls(**params)`` (it should map the data to ``embedding_size`` features).

    Example:
        >>> build_model("mlp", (64,), 8, {"hidden": [16]})(torch.rand(2, 64)).shape
        torch.Size([2, 8])
    """
    if name == "mlp":
        width = 1
        for size in in_shape:
            width *= int(size)
        mlp = MLP(width, out_features=embedding_size, **params)
        return mlp if len(in_shape) == 1 else nn.Sequential(nn.Flatten(), mlp)
    if name == "cnn":
        in_channels = int(in_shape[0]) if len(in_shape) == 3 else 1
        return SmallCNN(out_features=embedding_size, in_channels=in_channels, **params)
    return import_module_class(name)(**params)
