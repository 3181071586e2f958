"""Embedding networks: an MLP for feature vectors, a small CNN for 28x28 images, and user modules by import path."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import all_finite, check_range, message

__all__ = [
    "BUILTIN_MODELS",
    "check_model_name",
    "MLP",
    "SmallCNN",
    "EnergyCNN",
    "PCAHead",
    "fit_projections",
    "projection_heads",
    "training_width",
    "import_module_class",
    "build_model",
]

#: the model names :func:`build_model` knows besides import paths.
BUILTIN_MODELS = ("mlp", "cnn", "energy")


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


class PCAHead(nn.Module):
    """A linear projection onto the leading principal components of its inputs, fitted on data, not by gradients.

    Until :meth:`fit` is called the head passes its inputs through unchanged, so a network ending in it trains
    on its full-width features; fitted, it maps ``x`` to ``((x - mean) @ components.T) * scale``, the PCA of the
    data it was fitted on (Pearson, 1901). Reducing trained descriptors by PCA fitted on training data, and
    whitening them, is the usual last step of image-retrieval pipelines (Jegou and Chum, 2012, "Negative
    evidences and co-occurrences in image retrieval: the benefit of PCA and whitening"): without whitening a
    few high-variance directions dominate the distances.

    With ``whitening=alpha`` component ``i`` is divided by ``sqrt(lambda_i / mean(lambda) + alpha)``, where
    ``lambda_i`` is its variance and ``mean(lambda)`` the mean variance of the kept components: ``alpha = 0``
    whitens fully, a larger ``alpha`` shrinks towards plain PCA (``None``, ``scale = 1``). The mean, the
    components, the scale and whether the head is fitted are buffers, so they travel with the ``state_dict``.

    Args:
        in_features: width of the inputs, ``>= 1``.
        out_features: number of components kept, ``1 <= out_features <= in_features``.
        whitening: shrinkage ``alpha >= 0`` of the whitening, or None for plain PCA.

    Example:
        >>> head = PCAHead(3, 1)
        >>> data = torch.tensor([[0.0, 0, 0], [2, 0, 0], [4, 0, 1e-3]])
        >>> tuple(head(data).shape), head.fit(data) is head, head(data).abs().flatten().round().tolist()
        ((3, 3), True, [2.0, 0.0, 2.0])
    """

    mean: Tensor
    components: Tensor
    scale: Tensor
    fitted: Tensor

    def __init__(self, in_features: int, out_features: int, whitening: float | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, "in_features", in_features, low=1, integer=True)
        check_range(name, "out_features", out_features, low=1, high=in_features, integer=True)
        if whitening is not None:
            check_range(name, "whitening", whitening, low=0.0)
        self.in_features, self.out_features, self.whitening = in_features, out_features, whitening
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("components", torch.zeros(out_features, in_features))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, features: Tensor, chunk_rows: int = 65536) -> PCAHead:
        """Fit the mean and the leading components to ``features`` of shape ``(n, in_features)``, ``n >= 2``.

        The covariance is accumulated in float64, ``chunk_rows`` rows at a time; each component's sign is
        fixed so that its largest entry in absolute value is positive; with whitening, the scale follows from
        the kept variances (relative variances are floored at ``1e-12``). Returns ``self``.

        Raises:
            ValueError: wrong shape, fewer than two rows, or non-finite values.
        """
        name = type(self).__name__
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"{name}.fit: expected features of shape (n, {self.in_features}), got {tuple(features.shape)}."
            )
        if len(features) < 2:
            raise ValueError(f"{name}.fit: needs at least 2 rows to estimate a covariance, got {len(features)}.")
        if not all_finite(features):
            raise ValueError(f"{name}.fit: the features contain NaN or Inf; check the network and its inputs.")
        rows = features.to(torch.float64)
        mean = rows.mean(0)
        scatter = torch.zeros(self.in_features, self.in_features, dtype=torch.float64, device=rows.device)
        for chunk in rows.split(chunk_rows):
            centred = chunk - mean
            scatter += centred.T @ centred
        values, vectors = torch.linalg.eigh(scatter / (len(rows) - 1))
        kept = torch.argsort(values, descending=True)[: self.out_features]
        leading = vectors[:, kept].T
        signs = torch.sign(leading.gather(1, leading.abs().argmax(1, keepdim=True)))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.components.copy_((leading * signs).to(self.components.dtype))
        if self.whitening is not None:
            variances = values[kept].clamp_min(0.0)
            relative = (variances / variances.mean().clamp_min(torch.finfo(torch.float64).tiny)).clamp_min(1e-12)
            self.scale.copy_((relative + self.whitening).rsqrt().to(self.scale.dtype))
        self.fitted.fill_(True)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # heads saved before whitening existed have no scale: theirs is 1
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """The projection of ``x`` (``(N, in_features)``) when fitted, else ``x`` itself."""
        if not bool(self.fitted):
            return x
        return ((x - self.mean) @ self.components.T) * self.scale


class EnergyCNN(nn.Module):
    """Pooled local energy of learned filters, reduced by a fitted PCA: a learned histogram of oriented gradients.

    ``Conv(kernel_size x kernel_size, filters) -> square -> mean over cells of cell x cell pixels -> square
    root -> flatten -> L2 normalisation -> PCAHead(out_features)``. The squared responses pooled and
    rooted are the local energy of each filter (Adelson and Bergen, 1985, JOSA A 2(2); L2 pooling: Sermanet,
    Chintala and LeCun, 2012, arXiv:1204.3968); with oriented edge filters the features are a histogram of
    oriented gradients per cell (Dalal and Triggs, 2005). The features keep their spatial layout instead of
    collapsing it into a few dense layers, which keeps what separates classes never seen in training.

    During training the :class:`PCAHead` is not yet fitted and the output is the normalised features, of width
    ``filters * (image_size // cell) ** 2`` (:func:`training_width`); :func:`fit_projections` fits the head
    on the training data afterwards and the output becomes ``out_features`` wide.

    Args:
        out_features: embedding size after the head, ``1 <= out_features <= `` the feature width.
        filters: number of learned filters, ``>= 1``.
        kernel_size: their size, an odd number ``>= 1``.
        cell: side of the pooling cells in pixels; ``image_size`` must be a multiple of it.
        image_size: side of the square input images, ``>= 1``.
        in_channels: image channels, ``>= 1``.
        whitening: the head's whitening shrinkage (see :class:`PCAHead`); None: plain PCA.

    Example:
        >>> model = EnergyCNN(out_features=8, filters=2, kernel_size=3, cell=4, image_size=8)
        >>> tuple(model(torch.rand(5, 64)).shape), training_width(model, 8)
        ((5, 8), 8)
        >>> tuple(fit_projections(EnergyCNN(out_features=3, filters=2, cell=2, image_size=4), torch.rand(9, 16))(
        ...     torch.rand(2, 1, 4, 4)).shape)
        (2, 3)
    """

    def __init__(
        self,
        out_features: int = 64,
        filters: int = 8,
        kernel_size: int = 5,
        cell: int = 4,
        image_size: int = 28,
        in_channels: int = 1,
        whitening: float | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("filters", filters), ("kernel_size", kernel_size), ("cell", cell),
                           ("image_size", image_size), ("in_channels", in_channels)):
            check_range(name, arg, value, low=1, integer=True)
        if kernel_size % 2 == 0:
            rule = "an odd number (the output keeps the image size)"
            raise ValueError(message(name, "kernel_size", rule, kernel_size))
        if image_size % cell:
            raise ValueError(message(name, "cell", f"a divisor of image_size={image_size}", cell))
        self.filters, self.kernel_size, self.cell = filters, kernel_size, cell
        self.image_size, self.in_channels = image_size, in_channels
        self.conv = nn.Conv2d(in_channels, filters, kernel_size, padding=kernel_size // 2)
        self.head = PCAHead(filters * (image_size // cell) ** 2, out_features, whitening)
        self.out_features = out_features

    def features(self, x: Tensor) -> Tensor:
        """The L2-normalised pooled energy of ``x``: ``(N, filters * (image_size // cell) ** 2)``."""
        if x.ndim != 4:
            x = x.reshape(len(x), self.in_channels, self.image_size, self.image_size)
        energy = F.avg_pool2d(self.conv(x).square(), self.cell)
        return F.normalize(torch.sqrt(energy + 1e-6).flatten(1), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``(N, C, S, S)`` (or flat ``(N, C*S*S)``); see the class for the output width."""
        return self.head(self.features(x))


def projection_heads(model: nn.Module) -> list[PCAHead]:
    """The :class:`PCAHead` layers of ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, PCAHead)]


def training_width(model: nn.Module, embedding_size: int) -> int:
    """Width of the model's output while it trains: the input width of its first :class:`PCAHead` (which is
    fitted only after training), else ``embedding_size``. Losses with one weight vector per class take it."""
    for head in projection_heads(model):
        if not bool(head.fitted):
            return head.in_features
    return embedding_size


def fit_projections(
    model: nn.Module, inputs: Tensor, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> nn.Module:
    """Fit every :class:`PCAHead` of ``model`` on what reaches it when ``inputs`` are embedded; return ``model``.

    Heads are fitted one after another in module order (each later head sees the earlier ones fitted), from
    a pass in eval mode without gradients; the model's mode is restored. A model without heads is unchanged.
    """
    was_training = model.training
    model.eval()
    try:
        for head in projection_heads(model):
            head.fitted.fill_(False)
            seen: list[Tensor] = []
            hook = head.register_forward_pre_hook(lambda _module, args, into=seen: into.append(args[0].detach()))
            try:
                with torch.no_grad():
                    for chunk in inputs.split(batch_size):
                        model(chunk.to(device))
            finally:
                hook.remove()
            head.fit(torch.cat(seen))
    finally:
        model.train(was_training)
    return model


def check_model_name(owner: str, name: str) -> None:
    """Raise ValueError unless ``name`` is one of :data:`BUILTIN_MODELS` or looks like an import path."""
    if name not in BUILTIN_MODELS and "." not in name and ":" not in name:
        rule = ", ".join(f'"{known}"' for known in BUILTIN_MODELS) + ' or an import path such as "package.module:Class"'
        raise ValueError(message(owner, "model.name", rule, name))


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
    """The embedding network named by a configuration: ``"mlp"``, ``"cnn"``, ``"energy"`` or an import path.

    ``"mlp"`` takes ``hidden``, ``normalize``, ``batch_norm`` from ``params`` and the input width from
    ``in_shape`` (flattened); ``"cnn"`` takes :class:`SmallCNN`'s arguments; ``"energy"`` takes
    :class:`EnergyCNN`'s ``filters``, ``kernel_size``, ``cell`` and ``whitening``, and the image size and
    channels from ``in_shape`` (``(C, S, S)``, or ``(S * S,)`` for one flattened channel); an import path is called as
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
    if name == "energy":
        channels, side = _square_image(in_shape)
        return EnergyCNN(out_features=embedding_size, image_size=side, in_channels=channels, **params)
    return import_module_class(name)(**params)


def _square_image(in_shape: Sequence[int]) -> tuple[int, int]:
    """``(channels, side)`` of square images given as ``(C, S, S)`` or flattened as ``(S * S,)``."""
    shape = [int(size) for size in in_shape]
    if len(shape) == 3 and shape[1] == shape[2]:
        return shape[0], shape[1]
    if len(shape) == 1:
        side = int(round(shape[0] ** 0.5))
        if side * side == shape[0]:
            return 1, side
    raise ValueError(
        message("EnergyCNN", "input shape", "square images (C, S, S) or flattened (S*S,)", tuple(shape))
    )
