"""Image augmentations written in torch, for ``(C, H, W)`` or batched ``(N, C, H, W)`` float images in ``[0, 1]``.

The standard training pipeline of metric learning on images (Musgrave, Belongie and Lim, 2020,
arXiv:2003.08505): a random resized crop (Szegedy et al., 2015, "Going deeper with convolutions",
arXiv:1409.4842), a horizontal flip, optionally colour jitter (Howard, 2013, "Some Improvements on Deep
Convolutional Neural Network Based Image Classification", arXiv:1312.5402), then per-channel normalisation;
evaluation resizes and centre-crops.

Randomness: every random transform takes ``generator`` (a ``torch.Generator``) or ``seed`` (an integer that
seeds a new generator), never both; with neither it uses torch's global generator, which
``torch.utils.data.DataLoader`` seeds differently in each worker process. A transform holding its own generator
is copied into each worker with the same state, so with ``num_workers > 0`` give it a different seed per worker
(``worker_init_fn``). Random numbers are drawn on the CPU, so results do not depend on the image's device.

Example:
    >>> train = Compose([RandomResizedCrop(24, seed=0), RandomHorizontalFlip(seed=1),
    ...                  Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])
    >>> train(torch.rand(3, 40, 30)).shape
    torch.Size([3, 24, 24])
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import Described, check_choice, check_range, message

__all__ = [
    "Interpolation",
    "Transform",
    "Compose",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "ColorJitter",
    "JitterParams",
    "Normalize",
    "resize",
    "resized_crop",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
]

#: ITU-R BT.601 luma weights of red, green and blue.
_LUMA = (0.299, 0.587, 0.114)

# Szegedy et al. (2015): "patches of various sizes ... distributed evenly between 8% and 100% of the image
# area with aspect ratio constrained to the interval [3/4, 4/3]".
_CROP_SCALE = (0.08, 1.0)
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_ATTEMPTS = 10


class Interpolation(str, enum.Enum):
    """How :class:`Resize` and :class:`RandomResizedCrop` resample.

    ``"bilinear"`` and ``"bicubic"`` low-pass filter when shrinking if ``antialias`` is on (the filters of
    Pillow's resize); ``"nearest"`` picks the input pixel whose centre is nearest (``"nearest-exact"`` in
    ``torch.nn.functional.interpolate``). Bicubic values may overshoot ``[0, 1]`` slightly.

    Example:
        >>> Interpolation("bicubic") is Interpolation.BICUBIC
        True
    """

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


# Helpers --------------------------------------------------------------------------------------------------------


def _check_image(owner: str, image: Any, arg: str = "image") -> bool:
    """Check a ``(C, H, W)`` or ``(N, C, H, W)`` floating-point tensor; return whether it is batched."""
    if not isinstance(image, Tensor):
        raise TypeError(message(owner, arg, "a torch.Tensor", Described(type(image).__name__)))
    if image.ndim not in (3, 4):
        rule = "a (C, H, W) or (N, C, H, W) tensor"
        raise ValueError(message(owner, arg, rule, Described(f"tensor of shape {tuple(image.shape)}")))
    if not image.is_floating_point():
        rule = "a floating-point tensor with values in [0, 1]"
        raise TypeError(message(owner, arg, rule, Described(f"tensor of dtype {image.dtype}")))
    return image.ndim == 4


def _check_rgb(owner: str, image: Tensor) -> None:
    if image.shape[-3] != 3:
        rule = "an RGB image with 3 channels"
        raise ValueError(message(owner, "image", rule, Described(f"tensor of shape {tuple(image.shape)}")))


def _size_pair(owner: str, arg: str, size: Any) -> tuple[int, int]:
    """An output size: an integer for a square, or ``(height, width)``; each ``>= 1``."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        check_range(owner, arg, int(size), low=1, integer=True)
        return int(size), int(size)
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        for value in size:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(message(owner, arg, "an integer >= 1 or a pair (height, width) of them", size))
        return int(size[0]), int(size[1])
    raise ValueError(message(owner, arg, "an integer >= 1 or a pair (height, width) of them", size))


def _make_generator(owner: str, generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError(message(owner, "seed", "None when `generator` is given (pass one or the other)", seed))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(message(owner, "generator", "a torch.Generator", Described(type(generator).__name__)))
    if seed is not None:
        check_range(owner, "seed", seed, integer=True)
        return torch.Generator().manual_seed(seed)
    return generator


def _as_batch(image: Tensor) -> Tensor:
    return image if image.ndim == 4 else image.unsqueeze(0)


def _per_image(factor: float | Tensor, image: Tensor) -> float | Tensor:
    """A scalar stays a scalar; a tensor of one factor per image broadcasts over ``(C, H, W)``."""
    if isinstance(factor, Tensor):
        factor = factor.to(device=image.device, dtype=image.dtype)
        if factor.ndim == 1 and image.ndim == 4:
            return factor.view(-1, 1, 1, 1)
    return factor


def _uniform(low: float, high: float, n: int | None, generator: torch.Generator | None) -> Tensor:
    draw = torch.rand(() if n is None else (n,), generator=generator, dtype=torch.float64)
    return low + (high - low) * draw


# Functional layer -----------------------------------------------------------------------------------------------


def resize(
    image: Tensor,
    size: tuple[int, int],
    interpolation: Interpolation | str = "bilinear",
    antialias: bool = True,
) -> Tensor:
    """Resample ``(C, H, W)`` or ``(N, C, H, W)`` images to ``size = (height, width)``.

    Example:
        >>> resize(torch.ones(3, 8, 6), (4, 3)).shape
        torch.Size([3, 4, 3])
    """
    mode = check_choice("resize", "interpolation", interpolation, Interpolation)
    batch = _as_batch(image)
    if mode is Interpolation.NEAREST:
        out = F.interpolate(batch, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(batch, size=size, mode=mode.value, align_corners=False, antialias=antialias)
    return out if image.ndim == 4 else out.squeeze(0)


def resized_crop(
    image: Tensor,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    interpolation: Interpolation | str = "bilinear",
    antialias: bool = True,
) -> Tensor:
    """Crop ``box = (top, left, height, width)`` from ``(..., H, W)`` images and resample it to ``size``.

    Example:
        >>> image = torch.arange(16.0).view(1, 4, 4)
        >>> resized_crop(image, (1, 2, 2, 2), (2, 2))
        tensor([[[ 6.,  7.],
                 [10., 11.]]])
    """
    top, left, height, width = box
    return resize(image[..., top : top + height, left : left + width], size, interpolation, antialias)


def rgb_to_grayscale(image: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of RGB images, keeping a channel axis of size 1.

    Example:
        >>> rgb_to_grayscale(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)).flatten()
        tensor([0.2990])
    """
    r, g, b = image.unbind(dim=-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """Hue, saturation and value (Smith, 1978, "Color gamut transform pairs"), each in ``[0, 1]``.

    The hue is a fraction of a full turn (red 0, green 1/3, blue 2/3); greys get hue 0 and black saturation 0.

    Example:
        >>> rgb_to_hsv(torch.tensor([0.0, 0.5, 0.0]).view(3, 1, 1)).flatten()
        tensor([0.3333, 1.0000, 0.5000])
    """
    r, g, b = image.unbind(dim=-3)
    value, _ = image.max(dim=-3)
    lowest, _ = image.min(dim=-3)
    chroma = value - lowest
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    # the sector of the hexagon follows the largest channel; ties resolve in the order red, green, blue
    hue_r = torch.remainder((g - b) / safe_chroma, 6.0)
    hue_g = (b - r) / safe_chroma + 2.0
    hue_b = (r - g) / safe_chroma + 4.0
    hue = torch.where(value == r, hue_r, torch.where(value == g, hue_g, hue_b))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=-3)


def hsv_to_rgb(image: Tensor) -> Tensor:
    """The inverse of :func:`rgb_to_hsv` (hue taken modulo 1).

    Each channel is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` and ``n = 5, 3, 1`` for
    red, green and blue: the piecewise-linear hexagon written without branches.

    Example:
        >>> hsv_to_rgb(torch.tensor([2 / 3, 1.0, 1.0]).view(3, 1, 1)).flatten()
        tensor([0., 0., 1.])
    """
    hue, saturation, value = image.unbind(dim=-3)
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(-3), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(-3) * (1.0 - saturation.unsqueeze(-3) * ramp)


def adjust_brightness(image: Tensor, factor: float | Tensor) -> Tensor:
    """Scale intensities by ``factor`` (0 gives black, 1 the image), clipped to ``[0, 1]``.

    ``factor`` is a number, or for ``(N, C, H, W)`` images a tensor of ``N`` factors (also for the other
    ``adjust_*`` functions).

    Example:
        >>> adjust_brightness(torch.tensor([0.2, 0.6]).view(1, 1, 2), 2.0).flatten()
        tensor([0.4000, 1.0000])
    """
    return (image * _per_image(factor, image)).clamp(0.0, 1.0)


def adjust_contrast(image: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale (``factor`` 0 gives that flat grey, 1 the image).

    Works on RGB and on one-channel images (whose grayscale is the image). Clipped to ``[0, 1]``.

    Example:
        >>> adjust_contrast(torch.tensor([0.2, 0.6]).view(1, 1, 2), 0.5).flatten()
        tensor([0.3000, 0.5000])
    """
    gray = rgb_to_grayscale(image) if image.shape[-3] == 3 else image.mean(dim=-3, keepdim=True)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    f = _per_image(factor, image)
    return (f * image + (1.0 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(image: Tensor, factor: float | Tensor) -> Tensor:
    """Blend RGB images with their grayscale (``factor`` 0 gives grey, 1 the image), clipped to ``[0, 1]``.

    Example:
        >>> adjust_saturation(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1), 0.0).flatten()
        tensor([0.2990, 0.2990, 0.2990])
    """
    f = _per_image(factor, image)
    return (f * image + (1.0 - f) * rgb_to_grayscale(image)).clamp(0.0, 1.0)


def adjust_hue(image: Tensor, shift: float | Tensor) -> Tensor:
    """Rotate the hue of RGB images by ``shift`` turns (``shift`` in ``[-0.5, 0.5]``; 0 leaves them unchanged).

    Example:
        >>> adjust_hue(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1), 1 / 3).flatten()
        tensor([0., 1., 0.])
    """
    hsv = rgb_to_hsv(image)
    hue = torch.remainder(hsv[..., 0:1, :, :] + _per_image(shift, image), 1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[..., 1:, :, :]], dim=-3)).clamp(0.0, 1.0)


# Transforms -----------------------------------------------------------------------------------------------------


class Transform:
    """A callable on images: ``(C, H, W)`` and, where noted, batched ``(N, C, H, W)`` float tensors.

    Subclasses implement ``__call__``; ``_repr_args`` feeds the ``repr``.

    Example:
        >>> class Invert(Transform):
        ...     def __call__(self, image):
        ...         return 1.0 - image
        >>> Invert()(torch.zeros(1, 1, 2)), repr(Invert())
        (tensor([[[1., 1.]]]), 'Invert()')
    """

    def __call__(self, image: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> dict[str, Any]:
        return {}


class Compose(Transform):
    """Apply transforms one after the other.

    Args:
        transforms: callables taking and returning a tensor (dmlkit transforms or any function).

    Example:
        >>> pipeline = Compose([Resize(8), CenterCrop(8)])
        >>> pipeline(torch.rand(3, 16, 20)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise TypeError(message("Compose", "transforms", "a sequence of callables", transforms))
        for i, transform in enumerate(transforms):
            if not callable(transform):
                rule = "a sequence of callables"
                raise TypeError(message("Compose", f"transforms[{i}]", rule, Described(type(transform).__name__)))
        self.transforms = list(transforms)

    def __call__(self, image: Tensor) -> Tensor:
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Resize(Transform):
    """Resize images: an integer matches the shorter side keeping the aspect ratio, a pair sets ``(height, width)``.

    With an integer ``size`` and an ``H x W`` input, the shorter side becomes ``size`` and the longer one
    ``int(size * longer / shorter)``. Works on single and batched images.

    Args:
        size: an integer ``>= 1`` (shorter side) or ``(height, width)``.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"`` (see :class:`Interpolation`).
        antialias: low-pass filter when shrinking (bilinear and bicubic only), as Pillow does.

    Example:
        >>> Resize(16)(torch.rand(3, 32, 48)).shape
        torch.Size([3, 16, 24])
        >>> Resize((10, 5))(torch.rand(2, 3, 32, 48)).shape
        torch.Size([2, 3, 10, 5])
    """

    def __init__(
        self, size: int | Sequence[int], interpolation: Interpolation | str = "bilinear", antialias: bool = True
    ) -> None:
        owner = "Resize"
        self.shorter_side: int | None = None
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            check_range(owner, "size", int(size), low=1, integer=True)
            self.shorter_side = int(size)
            self.size: tuple[int, int] | None = None
        else:
            self.size = _size_pair(owner, "size", size)
        self.interpolation = check_choice(owner, "interpolation", interpolation, Interpolation)
        self.antialias = bool(antialias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an ``height x width`` input is resized to."""
        if self.size is not None:
            return self.size
        assert self.shorter_side is not None
        side = self.shorter_side
        if height <= width:
            return side, max(1, int(side * width / height))
        return max(1, int(side * height / width)), side

    def __call__(self, image: Tensor) -> Tensor:
        _check_image("Resize", image)
        size = self.output_size(image.shape[-2], image.shape[-1])
        return resize(image, size, self.interpolation, self.antialias)

    def _repr_args(self) -> dict[str, Any]:
        size = self.size if self.size is not None else self.shorter_side
        return {"size": size, "interpolation": self.interpolation.value, "antialias": self.antialias}


class CenterCrop(Transform):
    """Crop the centre ``(height, width)`` of images (the evaluation counterpart of :class:`RandomResizedCrop`).

    When the difference of sizes is odd, the extra row or column is dropped at the bottom or right.

    Args:
        size: an integer ``>= 1`` for a square, or ``(height, width)``; not larger than the image.

    Example:
        >>> CenterCrop(2)(torch.arange(16.0).view(1, 4, 4))
        tensor([[[ 5.,  6.],
                 [ 9., 10.]]])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size_pair("CenterCrop", "size", size)

    def __call__(self, image: Tensor) -> Tensor:
        _check_image("CenterCrop", image)
        height, width = image.shape[-2], image.shape[-1]
        out_h, out_w = self.size
        if out_h > height or out_w > width:
            rule = f"at most the image size ({height}, {width})"
            raise ValueError(message("CenterCrop", "size", rule, self.size))
        top, left = (height - out_h) // 2, (width - out_w) // 2
        return image[..., top : top + out_h, left : left + out_w]

    def _repr_args(self) -> dict[str, Any]:
        return {"size": self.size}


def _check_interval(owner: str, arg: str, value: Any, low: float, high: float | None) -> tuple[float, float]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or not (low <= value[0] <= value[1]) or (high is not None and value[1] > high):
        upper = "" if high is None else f" <= {high}"
        raise ValueError(message(owner, arg, f"a pair (min, max) with {low} <= min <= max{upper}", value))
    return float(value[0]), float(value[1])


class RandomResizedCrop(Transform):
    """Crop a random part of the image, of random area and aspect ratio, and resize it (Szegedy et al., 2015).

    The augmentation of "Going deeper with convolutions" (arXiv:1409.4842): the crop's area is a uniform
    fraction ``scale`` of the image's, its aspect ratio (width / height) log-uniform in ``ratio``, its position
    uniform. Up to 10 such boxes are drawn at once and the first that fits inside the image is used; if none
    fits, the crop is the largest centred box whose ratio is ``ratio`` clamped to its bounds. Sides are
    rounded to whole pixels, so area and ratio can miss their bounds by that rounding.

    Batched ``(N, C, H, W)`` inputs get an independent crop per image.

    Args:
        size: output size, an integer ``>= 1`` (square) or ``(height, width)``.
        scale: ``(min, max)`` fractions of the image area, ``0 < min <= max <= 1``.
        ratio: ``(min, max)`` aspect ratios, ``0 < min <= max``.
        interpolation: see :class:`Interpolation`.
        antialias: low-pass filter when shrinking.
        generator: the source of randomness, or None.
        seed: seeds a new generator (exclusive with ``generator``); with neither, torch's global generator.

    Example:
        >>> crop = RandomResizedCrop(8, seed=0)
        >>> top, left, height, width = crop.sample_box(32, 32)
        >>> 0 <= top <= 32 - height and 0 <= left <= 32 - width
        True
        >>> crop(torch.rand(3, 32, 32)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = _CROP_SCALE,
        ratio: tuple[float, float] = _CROP_RATIO,
        interpolation: Interpolation | str = "bilinear",
        antialias: bool = True,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        owner = "RandomResizedCrop"
        self.size = _size_pair(owner, "size", size)
        self.scale = _check_interval(owner, "scale", scale, 0.0, 1.0)
        if self.scale[0] <= 0:
            raise ValueError(message(owner, "scale", "a pair (min, max) with 0 < min <= max <= 1", scale))
        self.ratio = _check_interval(owner, "ratio", ratio, 0.0, None)
        if self.ratio[0] <= 0:
            raise ValueError(message(owner, "ratio", "a pair (min, max) with 0 < min <= max", ratio))
        self.interpolation = check_choice(owner, "interpolation", interpolation, Interpolation)
        self.antialias = bool(antialias)
        self.generator = _make_generator(owner, generator, seed)

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw a crop ``(top, left, box_height, box_width)`` for an ``height x width`` image."""
        area = height * width
        g = self.generator
        fractions = _uniform(self.scale[0], self.scale[1], _CROP_ATTEMPTS, g)
        log_ratios = _uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), _CROP_ATTEMPTS, g)
        ratios = torch.exp(log_ratios)
        widths = torch.round(torch.sqrt(area * fractions * ratios)).long()
        heights = torch.round(torch.sqrt(area * fractions / ratios)).long()
        fits = (widths >= 1) & (widths <= width) & (heights >= 1) & (heights <= height)
        if bool(fits.any()):
            first = int(torch.nonzero(fits)[0])
            box_h, box_w = int(heights[first]), int(widths[first])
        else:
            aspect = width / height
            if aspect < self.ratio[0]:
                box_w, box_h = width, max(1, min(height, round(width / self.ratio[0])))
            elif aspect > self.ratio[1]:
                box_h, box_w = height, max(1, min(width, round(height * self.ratio[1])))
            else:
                box_h, box_w = height, width
            top, left = (height - box_h) // 2, (width - box_w) // 2
            return top, left, box_h, box_w
        top = int(torch.randint(0, height - box_h + 1, (), generator=g))
        left = int(torch.randint(0, width - box_w + 1, (), generator=g))
        return top, left, box_h, box_w

    def __call__(self, image: Tensor) -> Tensor:
        batched = _check_image("RandomResizedCrop", image)
        height, width = image.shape[-2], image.shape[-1]
        if not batched:
            return resized_crop(image, self.sample_box(height, width), self.size, self.interpolation, self.antialias)
        # each image has its own box, hence its own resampling grid
        crops = [
            resized_crop(one, self.sample_box(height, width), self.size, self.interpolation, self.antialias)
            for one in image
        ]
        return torch.stack(crops) if crops else image.new_empty((0, image.shape[1], *self.size))

    def _repr_args(self) -> dict[str, Any]:
        return {"size": self.size, "scale": self.scale, "ratio": self.ratio, "interpolation": self.interpolation.value}


class RandomHorizontalFlip(Transform):
    """Mirror images left-right with probability ``p`` (each image of a batch independently).

    Args:
        p: probability of flipping, in ``[0, 1]``.
        generator: the source of randomness, or None.
        seed: seeds a new generator (exclusive with ``generator``).

    Example:
        >>> image = torch.arange(3.0).view(1, 1, 3)
        >>> RandomHorizontalFlip(p=1.0)(image)
        tensor([[[2., 1., 0.]]])
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None, seed: int | None = None) -> None:
        check_range("RandomHorizontalFlip", "p", p, low=0.0, high=1.0)
        self.p = float(p)
        self.generator = _make_generator("RandomHorizontalFlip", generator, seed)

    def __call__(self, image: Tensor) -> Tensor:
        batched = _check_image("RandomHorizontalFlip", image)
        if not batched:
            flip = bool(torch.rand((), generator=self.generator) < self.p)
            return image.flip(-1) if flip else image
        mask = (torch.rand(image.shape[0], generator=self.generator) < self.p).to(image.device)
        return torch.where(mask.view(-1, 1, 1, 1), image.flip(-1), image)

    def _repr_args(self) -> dict[str, Any]:
        return {"p": self.p}


class JitterParams(NamedTuple):
    """One draw of :class:`ColorJitter`: the order of the four adjustments and their factors.

    ``order`` lists indices into ``("brightness", "contrast", "saturation", "hue")``; a factor is None when
    that adjustment is off, a 0-D tensor for one image, or a tensor of one factor per image of a batch.

    Example:
        >>> params = ColorJitter(brightness=0.5, seed=0).sample()
        >>> sorted(params.order), params.contrast is None, 0.5 <= float(params.brightness) <= 1.5
        ([0, 1, 2, 3], True, True)
    """

    order: tuple[int, ...]
    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None
    hue: Tensor | None


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue changes, applied in a random order (Howard, 2013).

    The colour manipulations of Howard (2013, arXiv:1312.5402): each adjustment draws a factor uniformly from
    its interval and the four are applied in a random order. A number ``b`` for brightness, contrast or
    saturation means the interval ``[max(0, 1 - b), 1 + b]``; a number ``h`` for hue means ``[-h, h]`` turns of
    the colour wheel. An adjustment whose interval is the single neutral value (1, or 0 for hue) is skipped.

    - brightness ``f``: ``f x``;
    - contrast ``f``: ``f x + (1 - f) mean(gray(x))``;
    - saturation ``f``: ``f x + (1 - f) gray(x)``, gray the BT.601 luma;
    - hue ``f``: the HSV hue rotated by ``f``;

    each clipped to ``[0, 1]``. Saturation and hue need RGB images. Batched inputs get one factor per image and
    one order per call.

    Args:
        brightness: ``b >= 0`` or ``(min, max)`` with ``0 <= min <= max``.
        contrast: as ``brightness``.
        saturation: as ``brightness``.
        hue: ``0 <= h <= 0.5`` or ``(min, max)`` with ``-0.5 <= min <= max <= 0.5``.
        generator: the source of randomness, or None.
        seed: seeds a new generator (exclusive with ``generator``).

    Example:
        >>> jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, seed=0)
        >>> out = jitter(torch.rand(3, 8, 8))
        >>> out.shape, bool(((out >= 0) & (out <= 1)).all())
        (torch.Size([3, 8, 8]), True)
    """

    NAMES = ("brightness", "contrast", "saturation", "hue")

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0.0,
        contrast: float | tuple[float, float] = 0.0,
        saturation: float | tuple[float, float] = 0.0,
        hue: float | tuple[float, float] = 0.0,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        self.brightness = self._factor_range("brightness", brightness)
        self.contrast = self._factor_range("contrast", contrast)
        self.saturation = self._factor_range("saturation", saturation)
        self.hue = self._hue_range(hue)
        self.generator = _make_generator("ColorJitter", generator, seed)

    @staticmethod
    def _factor_range(arg: str, value: Any) -> tuple[float, float]:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            check_range("ColorJitter", arg, float(value), low=0.0)
            if not math.isfinite(value):
                raise ValueError(message("ColorJitter", arg, "finite", value))
            return max(0.0, 1.0 - float(value)), 1.0 + float(value)
        return _check_interval("ColorJitter", arg, value, 0.0, None)

    @staticmethod
    def _hue_range(value: Any) -> tuple[float, float]:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            check_range("ColorJitter", "hue", float(value), low=0.0, high=0.5)
            return -float(value), float(value)
        return _check_interval("ColorJitter", "hue", value, -0.5, 0.5)

    def sample(self, n: int | None = None) -> JitterParams:
        """Draw an order and the factors, for one image (``n`` None) or for ``n`` images."""
        g = self.generator
        order = tuple(int(i) for i in torch.randperm(4, generator=g))
        neutral = (1.0, 1.0, 1.0, 0.0)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        factors = [
            None if (low, high) == (value, value) else _uniform(low, high, n, g)
            for (low, high), value in zip(ranges, neutral, strict=True)
        ]
        return JitterParams(order, *factors)

    def apply(self, image: Tensor, params: JitterParams) -> Tensor:
        """Apply the adjustments of ``params`` (from :meth:`sample`) in their order."""
        operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        factors = (params.brightness, params.contrast, params.saturation, params.hue)
        if (factors[2] is not None or factors[3] is not None) and image.shape[-3] != 3:
            _check_rgb("ColorJitter", image)
        for index in params.order:
            factor = factors[index]
            if factor is not None:
                image = operations[index](image, factor)
        return image

    def __call__(self, image: Tensor) -> Tensor:
        batched = _check_image("ColorJitter", image)
        return self.apply(image, self.sample(image.shape[0] if batched else None))

    def _repr_args(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.NAMES}


class Normalize(Transform):
    """Standardise each channel: ``(x - mean[c]) / std[c]``. Works on single and batched images.

    Args:
        mean: one number per channel.
        std: one positive number per channel.

    Example:
        >>> Normalize([0.5], [0.25])(torch.tensor([[[0.0, 1.0]]]))
        tensor([[[-2.,  2.]]])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        owner = "Normalize"
        for arg, values in (("mean", mean), ("std", std)):
            ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
            if not ok or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
                raise TypeError(message(owner, arg, "a non-empty sequence of numbers, one per channel", values))
            if not all(math.isfinite(v) for v in values):
                raise ValueError(message(owner, arg, "finite", list(values)))
        if len(mean) != len(std):
            raise ValueError(message(owner, "std", f"of the same length as `mean` ({len(mean)})", list(std)))
        if any(v <= 0 for v in std):
            raise ValueError(message(owner, "std", "positive", list(std)))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, image: Tensor) -> Tensor:
        _check_image("Normalize", image)
        channels = image.shape[-3]
        if channels != len(self.mean):
            rule = f"an image with {len(self.mean)} channel(s), one per `mean` entry"
            raise ValueError(message("Normalize", "image", rule, Described(f"tensor of shape {tuple(image.shape)}")))
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def _repr_args(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}
