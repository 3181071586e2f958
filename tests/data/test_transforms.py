from __future__ import annotations

import colorsys
import itertools
import math

import numpy as np
import pytest
import torch

from dmlkit.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    hsv_to_rgb,
    resized_crop,
    rgb_to_grayscale,
    rgb_to_hsv,
)


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- naive float64 oracles ------------------------------------------------------------------------------------


def _triangle_weights(in_size: int, out_size: int) -> list[list[float]]:
    """Row i: the normalised weights of the input pixels for output pixel i, from the antialiased bilinear filter.

    Output pixel i has its centre at (i + 0.5) * s in input coordinates (s = in / out); input pixel j (centre
    j + 0.5) weighs max(0, 1 - |distance| / w) with w = max(s, 1), the triangle stretched when shrinking.
    """
    s = in_size / out_size
    w = max(s, 1.0)
    rows = []
    for i in range(out_size):
        centre = (i + 0.5) * s
        weights = [max(0.0, 1.0 - abs(j + 0.5 - centre) / w) for j in range(in_size)]
        total = sum(weights)
        rows.append([x / total for x in weights])
    return rows


def _naive_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    channels, in_h, in_w = image.shape
    wh, ww = _triangle_weights(in_h, out_h), _triangle_weights(in_w, out_w)
    out = np.zeros((channels, out_h, out_w))
    for c in range(channels):
        for i in range(out_h):
            for k in range(out_w):
                out[c, i, k] = sum(
                    wh[i][a] * ww[k][b] * image[c, a, b]
                    for a in range(in_h)
                    for b in range(in_w)
                    if wh[i][a] * ww[k][b]
                )
    return out


def _naive_gray(pixel: tuple[float, float, float]) -> float:
    return 0.299 * pixel[0] + 0.587 * pixel[1] + 0.114 * pixel[2]


def _pixels(image: torch.Tensor) -> list[tuple[int, int, tuple[float, float, float]]]:
    return [(i, k, tuple(image[:, i, k].tolist())) for i in range(image.shape[1]) for k in range(image.shape[2])]


# --- Resize, CenterCrop, RandomResizedCrop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((12, 9), (5, 4)), ((7, 10), (7, 3)), ((4, 5), (9, 11)), ((6, 6), (6, 6))]
)
def test_resize_equals_the_naive_antialiased_bilinear_filter(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    image = _rand(2, *in_hw, dtype=torch.float64)
    out = Resize(out_hw)(image)
    assert out.shape == (2, *out_hw) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _naive_resize(image.numpy(), *out_hw), rtol=0, atol=1e-12)


def test_resize_matches_pillow_and_interpolate() -> None:
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed for the cross-check")
    image = _rand(1, 37, 53)
    for mode, pil_mode in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
        ours = Resize((15, 21), interpolation=mode)(image)
        pil = np.asarray(Image.fromarray(image[0].numpy(), mode="F").resize((21, 15), pil_mode))
        np.testing.assert_allclose(ours[0].numpy(), pil, atol=2e-5)
    nearest = Resize((15, 21), interpolation="nearest")(image)
    pil = np.asarray(Image.fromarray(image[0].numpy(), mode="F").resize((21, 15), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(nearest[0].numpy(), pil)
    batch = _rand(4, 3, 20, 30, seed=2)
    expected = torch.nn.functional.interpolate(batch, size=(7, 9), mode="bilinear", antialias=True)
    torch.testing.assert_close(Resize((7, 9))(batch), expected, rtol=0, atol=0)
    aliased = torch.nn.functional.interpolate(batch, size=(7, 9), mode="bilinear", antialias=False)
    torch.testing.assert_close(Resize((7, 9), antialias=False)(batch), aliased, rtol=0, atol=0)


def test_resize_integer_size_keeps_the_aspect_ratio() -> None:
    assert Resize(10)(_rand(3, 20, 35)).shape == (3, 10, 17)  # int(10 * 35 / 20) = 17
    assert Resize(10)(_rand(3, 35, 20)).shape == (3, 17, 10)
    assert Resize(4)(_rand(2, 1, 8, 8)).shape == (2, 1, 4, 4)
    constant = torch.full((3, 13, 17), 0.25)
    torch.testing.assert_close(Resize((5, 6))(constant), torch.full((3, 5, 6), 0.25))


def test_center_crop_is_the_middle_slice() -> None:
    image = torch.arange(5 * 6.0).view(1, 5, 6)
    assert torch.equal(CenterCrop((3, 3))(image), image[:, 1:4, 1:4])
    assert torch.equal(CenterCrop(2)(image), image[:, 1:3, 2:4])
    assert torch.equal(CenterCrop((5, 6))(image), image)
    with pytest.raises(ValueError, match=r"^CenterCrop: `size` must be at most the image size \(5, 6\), got \(6, 6\)"):
        CenterCrop(6)(image)


def _box_may_be_a_rounded_valid_box(h: int, w: int, area: int, scale: tuple[float, float], ratio: tuple[float, float]):
    """Whether unrounded sides within half a pixel of (h, w) satisfy the area and ratio bounds."""
    low_area, high_area = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
    low_ratio, high_ratio = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
    area_ok = low_area <= scale[1] * area + 1e-9 and high_area >= scale[0] * area - 1e-9
    ratio_ok = low_ratio <= ratio[1] + 1e-9 and high_ratio >= ratio[0] - 1e-9
    return area_ok and ratio_ok


# the largest reachable area: 1 when a box of ratio in [3/4, 4/3] can cover the image; 17 x round(17 / 0.75)
# = 17 x 23 of 31 x 17 pixels for the tall image
@pytest.mark.parametrize(("height", "width", "largest"), [(60, 80, 1.0), (224, 224, 1.0), (31, 17, 23 / 31)])
def test_random_crop_boxes_respect_the_inception_bounds(height: int, width: int, largest: float) -> None:
    crop = RandomResizedCrop(8, seed=height)
    fractions, ratios = [], []
    for _ in range(1500):
        top, left, h, w = crop.sample_box(height, width)
        assert 0 <= top <= height - h and 0 <= left <= width - w and h >= 1 and w >= 1
        assert _box_may_be_a_rounded_valid_box(h, w, height * width, (0.08, 1.0), (3 / 4, 4 / 3))
        fractions.append(h * w / (height * width))
        ratios.append(w / h)
    # the draws cover their intervals, not a corner of them
    assert min(fractions) < 0.12 and largest - 0.15 < max(fractions) <= largest
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_random_crop_positions_are_uniform_and_custom_bounds_hold() -> None:
    crop = RandomResizedCrop(4, scale=(0.25, 0.25), ratio=(1.0, 1.0), seed=3)
    tops = [crop.sample_box(40, 40)[0] for _ in range(3000)]  # always a 20x20 box
    assert set(tops) == set(range(21))
    assert abs(float(np.mean(tops)) - 10.0) < 0.5
    assert {crop.sample_box(40, 40)[2:] for _ in range(20)} == {(20, 20)}


def test_random_crop_falls_back_to_a_centred_box() -> None:
    crop = RandomResizedCrop(4, scale=(0.9, 1.0), seed=0)  # a 10x100 strip: no box of ratio <= 4/3 fits
    assert crop.sample_box(10, 100) == (0, 43, 10, 13)
    assert crop.sample_box(100, 10) == (43, 0, 13, 10)
    assert RandomResizedCrop(4, scale=(0.9, 1.0), ratio=(0.05, 0.2), seed=0).sample_box(10, 10) == (0, 4, 10, 2)


def test_random_crop_output_is_the_resized_box() -> None:
    image = _rand(3, 30, 40, seed=4)
    crop = RandomResizedCrop((9, 7), seed=11)
    state = crop.generator.get_state()  # type: ignore[union-attr]
    box = crop.sample_box(30, 40)
    crop.generator.set_state(state)  # type: ignore[union-attr]
    top, left, h, w = box
    expected = torch.nn.functional.interpolate(
        image[None, :, top : top + h, left : left + w], size=(9, 7), mode="bilinear", antialias=True
    )[0]
    torch.testing.assert_close(crop(image), expected, rtol=0, atol=0)
    assert torch.equal(resized_crop(image, box, (h, w)), image[:, top : top + h, left : left + w])


def test_random_crop_batches_draw_one_box_per_image() -> None:
    image = _rand(1, 3, 30, 40, seed=5).expand(6, 3, 30, 40)
    out = RandomResizedCrop(8, seed=0)(image)
    assert out.shape == (6, 3, 8, 8)
    assert len({tuple(o.flatten()[:5].tolist()) for o in out}) == 6
    assert RandomResizedCrop(8, seed=0)(image[:0]).shape == (0, 3, 8, 8)


# --- flip ------------------------------------------------------------------------------------------------------


def test_flip_semantics() -> None:
    image = _rand(3, 4, 5)
    always = RandomHorizontalFlip(p=1.0)
    assert torch.equal(always(image), image.flip(-1)) and torch.equal(always(always(image)), image)
    assert torch.equal(always(image)[:, :, 0], image[:, :, 4])
    assert RandomHorizontalFlip(p=0.0)(image) is image
    flip = RandomHorizontalFlip(p=0.3, seed=0)
    flipped = sum(not torch.equal(flip(image), image) for _ in range(4000))
    assert abs(flipped / 4000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)


def test_flip_batches_decide_per_image() -> None:
    batch = _rand(500, 1, 2, 3)
    out = RandomHorizontalFlip(seed=1)(batch)
    is_flipped = (out == batch.flip(-1)).flatten(1).all(1)
    is_same = (out == batch).flatten(1).all(1)
    assert bool((is_flipped ^ is_same).all())
    assert 200 < int(is_flipped.sum()) < 300


# --- colour -----------------------------------------------------------------------------------------------------


def test_hsv_conversions_match_colorsys() -> None:
    image = _rand(3, 4, 6, seed=6, dtype=torch.float64)
    image[:, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # grey
    image[:, 0, 1] = 0.0  # black
    image[:, 0, 2] = torch.tensor([0.7, 0.7, 0.2])  # red = green maximum
    hsv = rgb_to_hsv(image)
    for i, k, pixel in _pixels(image):
        np.testing.assert_allclose(hsv[:, i, k].numpy(), colorsys.rgb_to_hsv(*pixel), atol=1e-12)
    back = hsv_to_rgb(hsv)
    for i, k, pixel in _pixels(hsv):
        np.testing.assert_allclose(back[:, i, k].numpy(), colorsys.hsv_to_rgb(*pixel), atol=1e-12)
    torch.testing.assert_close(back, image, rtol=0, atol=1e-12)


def test_hue_shift_matches_colorsys_and_zero_is_identity() -> None:
    image = _rand(3, 5, 4, seed=7, dtype=torch.float64)
    for shift in (0.1, -0.37, 0.5):
        out = adjust_hue(image, shift)
        for i, k, pixel in _pixels(image):
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            np.testing.assert_allclose(out[:, i, k].numpy(), colorsys.hsv_to_rgb((h + shift) % 1.0, s, v), atol=1e-12)
    single = _rand(3, 16, 16, seed=8)
    torch.testing.assert_close(adjust_hue(single, 0.0), single, rtol=0, atol=1e-6)
    jitter = ColorJitter(hue=(0.0, 0.0), seed=0)
    assert jitter.sample().hue is None and torch.equal(jitter(single), single)


def test_brightness_contrast_saturation_formulas() -> None:
    image = _rand(3, 3, 4, seed=9, dtype=torch.float64)
    gray_mean = sum(_naive_gray(p) for _, _, p in _pixels(image)) / 12
    bright, contrast, sat = adjust_brightness(image, 1.3), adjust_contrast(image, 0.6), adjust_saturation(image, 1.7)
    for i, k, pixel in _pixels(image):
        gray = _naive_gray(pixel)
        for c in range(3):
            assert bright[c, i, k] == pytest.approx(min(1.0, 1.3 * pixel[c]), abs=1e-12)
            assert contrast[c, i, k] == pytest.approx(min(1.0, max(0.0, 0.6 * pixel[c] + 0.4 * gray_mean)), abs=1e-12)
            assert sat[c, i, k] == pytest.approx(min(1.0, max(0.0, 1.7 * pixel[c] - 0.7 * gray)), abs=1e-12)
    torch.testing.assert_close(rgb_to_grayscale(image)[0, 1, 2].item(), _naive_gray(tuple(image[:, 1, 2].tolist())))
    assert torch.equal(adjust_saturation(image, 1.0), image) and torch.equal(adjust_contrast(image, 1.0), image)
    flat = adjust_contrast(image, 0.0)
    torch.testing.assert_close(flat, torch.full_like(image, gray_mean), rtol=0, atol=1e-12)
    one_channel = _rand(1, 4, 4, seed=10)
    torch.testing.assert_close(adjust_contrast(one_channel, 0.0), torch.full_like(one_channel, one_channel.mean()))


def test_jitter_factor_ranges_and_orders() -> None:
    jitter = ColorJitter(brightness=0.4, contrast=(0.5, 0.9), saturation=1.5, hue=0.1, seed=0)
    assert jitter.brightness == (0.6, 1.4) and jitter.saturation == (0.0, 2.5) and jitter.hue == (-0.1, 0.1)
    params = jitter.sample(5000)
    for name, (low, high) in zip(ColorJitter.NAMES, [(0.6, 1.4), (0.5, 0.9), (0.0, 2.5), (-0.1, 0.1)], strict=True):
        factors = getattr(params, name)
        assert factors.shape == (5000,)
        assert float(factors.min()) >= low and float(factors.max()) <= high
        assert float(factors.min()) < low + 0.01 * (high - low) and float(factors.max()) > high - 0.01 * (high - low)
        assert abs(float(factors.mean()) - (low + high) / 2) < 0.02 * (high - low)
    orders = {jitter.sample().order for _ in range(600)}
    assert orders == set(itertools.permutations(range(4)))
    off = ColorJitter(seed=0).sample()
    assert (off.brightness, off.contrast, off.saturation, off.hue) == (None, None, None, None)


def test_jitter_call_applies_its_draw_in_order() -> None:
    image = _rand(3, 6, 6, seed=12)
    jitter = ColorJitter(0.5, 0.5, 0.5, 0.2, seed=4)
    state = jitter.generator.get_state()  # type: ignore[union-attr]
    params = jitter.sample()
    jitter.generator.set_state(state)  # type: ignore[union-attr]
    expected = image
    ops = {0: adjust_brightness, 1: adjust_contrast, 2: adjust_saturation, 3: adjust_hue}
    for index in params.order:
        expected = ops[index](expected, float(getattr(params, ColorJitter.NAMES[index])))
    torch.testing.assert_close(jitter(image), expected, rtol=0, atol=1e-6)


def test_jitter_batches_use_one_factor_per_image() -> None:
    batch = _rand(4, 3, 5, 5, seed=13)
    jitter = ColorJitter(0.3, 0.3, 0.3, 0.1, seed=2)
    state = jitter.generator.get_state()  # type: ignore[union-attr]
    params = jitter.sample(4)
    jitter.generator.set_state(state)  # type: ignore[union-attr]
    out = jitter(batch)
    for n in range(4):
        one = type(params)(params.order, *(getattr(params, name)[n] for name in ColorJitter.NAMES))
        torch.testing.assert_close(out[n], jitter.apply(batch[n], one), rtol=0, atol=1e-6)


# --- Normalize, Compose, randomness, errors ---------------------------------------------------------------------


def test_normalize_is_exact() -> None:
    image = _rand(2, 3, 4, 5, seed=14, dtype=torch.float64)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = Normalize(mean, std)(image)
    expected = torch.empty_like(image)
    for n, c, i, k in itertools.product(range(2), range(3), range(4), range(5)):
        expected[n, c, i, k] = (image[n, c, i, k].item() - mean[c]) / std[c]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(Normalize(mean, std)(image[0]), expected[0], rtol=0, atol=1e-15)


def test_compose_applies_in_order() -> None:
    image = _rand(3, 10, 10)
    pipeline = Compose([CenterCrop(4), lambda x: x * 2, Normalize([1.0] * 3, [2.0] * 3)])
    torch.testing.assert_close(pipeline(image), (image[:, 3:7, 3:7] * 2 - 1) / 2)
    assert repr(Compose([CenterCrop(4), RandomHorizontalFlip()])) == (
        "Compose([\n    CenterCrop(size=(4, 4)),\n    RandomHorizontalFlip(p=0.5),\n])"
    )


def test_randomness_comes_from_the_seed_generator_or_global_state() -> None:
    image = _rand(3, 20, 20)

    def pipeline(**kw: object) -> Compose:
        return Compose([RandomResizedCrop(8, **kw), ColorJitter(0.4, 0.4, 0.4, 0.1, **kw)])  # type: ignore[arg-type]

    assert torch.equal(pipeline(seed=5)(image), pipeline(seed=5)(image))
    assert not torch.equal(pipeline(seed=5)(image), pipeline(seed=6)(image))
    same = Compose(
        [
            RandomResizedCrop(8, generator=torch.Generator().manual_seed(5)),
            ColorJitter(0.4, 0.4, 0.4, 0.1, generator=torch.Generator().manual_seed(5)),
        ]
    )
    assert torch.equal(same(image), pipeline(seed=5)(image))
    shared = torch.Generator().manual_seed(5)  # one stream for both: a different draw
    assert not torch.equal(pipeline(generator=shared)(image), pipeline(seed=5)(image))
    torch.manual_seed(0)
    first = pipeline()(image)
    torch.manual_seed(0)
    assert torch.equal(pipeline()(image), first)
    with pytest.raises(ValueError, match=r"^RandomHorizontalFlip: `seed` must be None when `generator` is given"):
        RandomHorizontalFlip(generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match=r"^ColorJitter: `generator` must be a torch\.Generator, got int\.$"):
        ColorJitter(generator=3)  # type: ignore[arg-type]


def test_argument_and_image_errors() -> None:
    with pytest.raises(ValueError, match=r"^RandomResizedCrop: `scale` must be a pair \(min, max\) with 0 < min <= "):
        RandomResizedCrop(8, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"`scale` must be a pair \(min, max\) with 0\.0 <= min <= max <= 1\.0, got "
                                         r"\(0\.5, 0\.2\)\."):  # fmt: skip
        RandomResizedCrop(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"^RandomResizedCrop: `size` must be an integer >= 1 or a pair"):
        RandomResizedCrop((8, 0))
    with pytest.raises(ValueError, match=r"^Resize: `interpolation` must be one of 'nearest', 'bilinear', 'bicubic', "
                                         r"got 'bilinar'\. Did you mean 'bilinear'\?"):  # fmt: skip
        Resize(8, interpolation="bilinar")
    with pytest.raises(ValueError, match=r"^ColorJitter: `hue` must be a number >= 0\.0 and <= 0\.5, got 0\.6\.$"):
        ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match=r"^ColorJitter: `brightness` must be a number >= 0\.0, got -0\.1\.$"):
        ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match=r"^ColorJitter: `image` must be an RGB image with 3 channels, got tensor of "
                                         r"shape \(1, 4, 4\)\.$"):  # fmt: skip
        ColorJitter(saturation=0.5)(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match=r"^Normalize: `std` must be positive, got \[1\.0, 0\.0\]\.$"):
        Normalize([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"^Normalize: `std` must be of the same length as `mean` \(2\)"):
        Normalize([0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match=r"^Normalize: `image` must be an image with 3 channel\(s\), one per `mean` "):
        Normalize([0.0] * 3, [1.0] * 3)(torch.rand(1, 4, 4))
    with pytest.raises(TypeError, match=r"^Resize: `image` must be a floating-point tensor with values in \[0, 1\], "
                                        r"got tensor of dtype torch\.uint8\.$"):  # fmt: skip
        Resize(4)(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^RandomHorizontalFlip: `image` must be a \(C, H, W\) or \(N, C, H, W\) "
                                         r"tensor, got tensor of shape \(8, 8\)\.$"):  # fmt: skip
        RandomHorizontalFlip()(torch.rand(8, 8))
    with pytest.raises(TypeError, match=r"^Compose: `transforms\[1\]` must be a sequence of callables, got int\.$"):
        Compose([Resize(4), 3])  # type: ignore[list-item]
