from __future__ import annotations

import pytest
import torch

from dmlkit.data import noisy_view


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_is_gaussian_with_the_given_std_away_from_the_bounds() -> None:
    x = torch.full((200, 100), 0.5, dtype=torch.float64)
    view = noisy_view(x, 0.05, generator=_generator())  # 10 std from the bounds: clipping never happens
    noise = view - x
    assert view.dtype == torch.float64 and view.shape == x.shape
    assert abs(float(noise.mean())) < 0.05 * 4 / (noise.numel() ** 0.5)
    assert float(noise.std()) == pytest.approx(0.05, rel=0.02)
    assert torch.equal(x, torch.full((200, 100), 0.5, dtype=torch.float64))  # the input is not modified


def test_view_is_the_input_plus_the_generators_normal_draws_clipped() -> None:
    x = torch.rand(7, 5, generator=_generator(1))
    expected = (x + 0.3 * torch.randn(7, 5, generator=_generator(2))).clamp(0.0, 1.0)
    torch.testing.assert_close(noisy_view(x, 0.3, generator=_generator(2)), expected, rtol=0, atol=0)


def test_clipping_to_the_bounds_and_open_sides() -> None:
    x = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)
    big = noisy_view(x.expand(1000, 3), 10.0, generator=_generator())
    assert float(big.min()) == 0.0 and float(big.max()) == 1.0
    shifted = noisy_view(x, 0.0, low=0.2, high=0.8)
    assert shifted.tolist() == [[0.2, 0.8, 0.5]]
    free = noisy_view(x.expand(1000, 3), 10.0, generator=_generator(), low=None, high=None)
    assert float(free.min()) < -1.0 and float(free.max()) > 2.0
    only_low = noisy_view(x.expand(1000, 3), 10.0, generator=_generator(), low=-1.0, high=None)
    assert float(only_low.min()) == -1.0 and float(only_low.max()) > 2.0


def test_zero_std_returns_a_copy_and_same_generator_same_view() -> None:
    x = torch.rand(4, 3)
    same = noisy_view(x, 0.0)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    unclipped = noisy_view(x, 0.0, low=None, high=None)
    assert torch.equal(unclipped, x) and unclipped.data_ptr() != x.data_ptr()
    assert torch.equal(noisy_view(x, 0.1, generator=_generator(5)), noisy_view(x, 0.1, generator=_generator(5)))
    assert not torch.equal(noisy_view(x, 0.1, generator=_generator(5)), noisy_view(x, 0.1, generator=_generator(6)))


def test_errors() -> None:
    x = torch.rand(2, 2)
    with pytest.raises(ValueError, match=r"^noisy_view: `std` must be a number >= 0\.0, got -0\.1\.$"):
        noisy_view(x, -0.1)
    with pytest.raises(ValueError, match=r"^noisy_view: `std` must be finite, got inf\.$"):
        noisy_view(x, float("inf"))
    with pytest.raises(TypeError, match=r"^noisy_view: `std` must be a number, got '0\.1'\.$"):
        noisy_view(x, "0.1")  # type: ignore[arg-type]
    expected = r"^noisy_view: `features` must be a floating-point tensor, got torch\.int64\.$"
    with pytest.raises(TypeError, match=expected):
        noisy_view(torch.ones(2, 2, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match=r"^noisy_view: `high` must be >= `low` \(1\.0\), got 0\.0\.$"):
        noisy_view(x, 0.1, low=1.0, high=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_serves_cuda_features_with_the_same_views() -> None:
    x = torch.rand(4, 6)
    on_gpu = noisy_view(x.cuda(), 0.1, generator=_generator(5))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), noisy_view(x, 0.1, generator=_generator(5)))
