"""EnergyCNN and PCAHead against naive references: PCA by plain float64 loops over the covariance and
power iteration, the pooled filter energy by explicit loops over pixels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dmlkit.training import EnergyCNN, PCAHead, TrainConfig, build_model, fit_projections
from dmlkit.training.loop import embed, train
from dmlkit.training.models import training_width
from dmlkit.training.run_folder import load_checkpoint, model_from_checkpoint, save_checkpoint


def _naive_leading_components(
    rows: list[list[float]], k: int
) -> tuple[list[float], list[list[float]], list[float]]:
    """Mean, the k leading covariance eigenvectors and their eigenvalues by power iteration with deflation."""
    n, d = len(rows), len(rows[0])
    mean = [sum(row[j] for row in rows) / n for j in range(d)]
    cov = [[sum((row[i] - mean[i]) * (row[j] - mean[j]) for row in rows) / (n - 1) for j in range(d)] for i in range(d)]
    vectors, values = [], []
    for _ in range(k):
        v = [1.0 / math.sqrt(d) + 0.01 * j for j in range(d)]
        for _ in range(2000):
            w = [sum(cov[i][j] * v[j] for j in range(d)) for i in range(d)]
            norm = math.sqrt(sum(x * x for x in w))
            v = [x / norm for x in w]
        value = sum(v[i] * sum(cov[i][j] * v[j] for j in range(d)) for i in range(d))
        cov = [[cov[i][j] - value * v[i] * v[j] for j in range(d)] for i in range(d)]
        vectors.append(v)
        values.append(value)
    return mean, vectors, values


def test_pca_head_matches_a_naive_pca_up_to_sign_and_fixes_the_sign() -> None:
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 3.0, 2.0, 0.5, 0.1], dtype=torch.float64)
    data = torch.randn(40, 5, generator=generator, dtype=torch.float64) * scales + 1.5
    mean, vectors, _ = _naive_leading_components(data.tolist(), 3)
    head = PCAHead(5, 3).double().fit(data)
    torch.testing.assert_close(head.mean, torch.tensor(mean, dtype=torch.float64))
    for got, want in zip(head.components, torch.tensor(vectors, dtype=torch.float64), strict=True):
        assert abs(float(got @ want)) == pytest.approx(1.0, abs=1e-8)
        assert float(got[got.abs().argmax()]) > 0  # the sign rule
    expected = (data - torch.tensor(mean, dtype=torch.float64)) @ head.components.T
    torch.testing.assert_close(head(data), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1e6])
def test_whitening_divides_each_component_by_its_shrunk_relative_standard_deviation(alpha: float) -> None:
    generator = torch.Generator().manual_seed(3)
    scales = torch.tensor([4.0, 2.0, 1.0, 0.3], dtype=torch.float64)
    data = torch.randn(50, 4, generator=generator, dtype=torch.float64) * scales - 0.7
    mean, vectors, values = _naive_leading_components(data.tolist(), 3)
    head = PCAHead(4, 3, whitening=alpha).double().fit(data)
    average = sum(values) / len(values)
    out = head(data)
    for i, (vector, value) in enumerate(zip(vectors, values, strict=True)):
        naive = [sum((row[j] - mean[j]) * vector[j] for j in range(4)) / math.sqrt(value / average + alpha)
                 for row in data.tolist()]
        sign = 1.0 if float(out[:, i] @ torch.tensor(naive, dtype=torch.float64)) > 0 else -1.0
        torch.testing.assert_close(out[:, i] * sign, torch.tensor(naive, dtype=torch.float64))
    variances = out.var(0)  # each component's variance is value / (value / average + alpha)
    expected = [v / (v / average + alpha) for v in values]
    torch.testing.assert_close(variances, torch.tensor(expected, dtype=torch.float64))
    if alpha == 0.0:
        torch.testing.assert_close(variances, torch.full((3,), average, dtype=torch.float64))


def test_whitening_of_a_constant_direction_stays_finite() -> None:
    data = torch.cat([torch.rand(8, 2, generator=torch.Generator().manual_seed(4)), torch.zeros(8, 1)], dim=1)
    head = PCAHead(3, 3, whitening=0.0).fit(data)
    assert bool(torch.isfinite(head.scale).all()) and bool(torch.isfinite(head(data)).all())


def test_pca_head_fit_in_chunks_equals_one_pass() -> None:
    data = torch.rand(23, 6, generator=torch.Generator().manual_seed(1))
    whole, chunked = PCAHead(6, 4).fit(data), PCAHead(6, 4).fit(data, chunk_rows=5)
    torch.testing.assert_close(whole.components, chunked.components)
    torch.testing.assert_close(whole.mean, chunked.mean)


def test_pca_head_passes_inputs_through_until_fitted_and_keeps_its_fit_in_the_state_dict() -> None:
    head = PCAHead(4, 2, whitening=0.5)
    x = torch.rand(3, 4)
    assert head(x) is x
    head.fit(torch.rand(10, 4, generator=torch.Generator().manual_seed(2)))
    copy = PCAHead(4, 2, whitening=0.5)
    copy.load_state_dict(head.state_dict())
    assert bool(copy.fitted) and not torch.equal(copy.scale, torch.ones(2))
    torch.testing.assert_close(copy(x), head(x))


def test_a_head_saved_without_a_scale_loads_as_plain_pca_and_other_missing_keys_still_fail() -> None:
    head = PCAHead(4, 2).fit(torch.rand(10, 4, generator=torch.Generator().manual_seed(5)))
    saved = {key: value for key, value in head.state_dict().items() if key != "scale"}
    copy = PCAHead(4, 2)
    copy.load_state_dict(saved)
    x = torch.rand(3, 4)
    torch.testing.assert_close(copy(x), head(x))
    del saved["components"]
    with pytest.raises(RuntimeError, match="components"):
        PCAHead(4, 2).load_state_dict(saved)


def test_pca_head_rejects_bad_arguments_and_data() -> None:
    with pytest.raises(ValueError, match="out_features"):
        PCAHead(3, 4)
    with pytest.raises(ValueError, match="whitening"):
        PCAHead(3, 2, whitening=-0.1)
    head = PCAHead(3, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        head.fit(torch.rand(5, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        head.fit(torch.rand(1, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        head.fit(torch.tensor([[0.0, 1, 2], [float("nan"), 0, 0]]))
    assert not bool(head.fitted)


def _naive_energy(model: EnergyCNN, image: torch.Tensor) -> torch.Tensor:
    """The normalised pooled energy of one (C, S, S) image by loops over filters, cells and pixels."""
    weight, bias = model.conv.weight.detach().double(), model.conv.bias.detach().double()
    k, side, cell = model.kernel_size, model.image_size, model.cell
    padded = torch.nn.functional.pad(image.double(), (k // 2,) * 4)
    values = []
    for f in range(model.filters):
        for cy in range(side // cell):
            for cx in range(side // cell):
                total = 0.0
                for y in range(cy * cell, (cy + 1) * cell):
                    for x in range(cx * cell, (cx + 1) * cell):
                        response = float((weight[f] * padded[:, y : y + k, x : x + k]).sum() + bias[f])
                        total += response * response
                values.append(math.sqrt(total / cell**2 + 1e-6))
    norm = math.sqrt(sum(v * v for v in values))
    return torch.tensor([v / norm for v in values], dtype=torch.float64)


def test_energy_features_match_loops_and_the_head_is_fitted_on_them() -> None:
    torch.manual_seed(0)
    model = EnergyCNN(out_features=5, filters=3, kernel_size=3, cell=2, image_size=6, in_channels=2)
    images = torch.rand(4, 2, 6, 6)
    features = model.features(images)
    assert features.shape == (4, 3 * 9) and training_width(model, 5) == 27
    for image, row in zip(images, features, strict=True):
        torch.testing.assert_close(row.double(), _naive_energy(model, image), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(images.flatten(1)), features)  # unfitted: the features themselves
    fit_projections(model, torch.rand(30, 72, generator=torch.Generator().manual_seed(3)), batch_size=7)
    assert model(images).shape == (4, 5) and training_width(model, 5) == 5
    torch.testing.assert_close(model(images), (features - model.head.mean) @ model.head.components.T)


def test_energy_model_gradients_match_finite_differences() -> None:
    torch.manual_seed(0)
    model = EnergyCNN(out_features=2, filters=2, kernel_size=3, cell=2, image_size=4).double()
    images = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.features, (images,))


def test_fit_projections_fits_every_head_in_order_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), PCAHead(5, 4), nn.Tanh(), PCAHead(4, 2)).train()
    inputs = torch.rand(50, 6, generator=torch.Generator().manual_seed(4))
    fit_projections(model, inputs, batch_size=16)
    assert model.training and all(bool(m.fitted) for m in model if isinstance(m, PCAHead))
    with torch.no_grad():
        second_inputs = torch.tanh(model[1](model[0](inputs)))
    expected = PCAHead(4, 2).fit(second_inputs)
    torch.testing.assert_close(model[3].components, expected.components)
    assert model(inputs).shape == (50, 2)


def test_energy_model_rejects_bad_shapes_and_arguments() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        EnergyCNN(kernel_size=4)
    with pytest.raises(ValueError, match="cell"):
        EnergyCNN(cell=5, image_size=28)
    with pytest.raises(ValueError, match="square images"):
        build_model("energy", (10,), 4, {})
    model = build_model("energy", (64,), 4, {"filters": 2, "kernel_size": 3, "cell": 2})
    assert isinstance(model, EnergyCNN) and (model.image_size, model.in_channels) == (8, 1)
    assert build_model("energy", (3, 8, 8), 4, {"cell": 4}).in_channels == 3


def test_a_configured_run_trains_the_full_features_then_embeds_through_the_fitted_head(tmp_path: Path) -> None:
    config = TrainConfig().apply_overrides(
        [
            "model.name=energy",
            "model.embedding_size=6",
            "model.params={'filters': 2, 'kernel_size': 3, 'cell': 4}",
            "loss.name=ntxent",
            "miner=null",
            "epochs=1",
            "iterations_per_epoch=2",
        ]
    )
    result = train(config, progress=False)
    assert result.test_embeddings is not None and result.test_embeddings.shape == (result.num_test, 6)
    assert bool(result.model.head.fitted) and set(result.before) == set(result.after)
    saved = save_checkpoint(tmp_path / "checkpoint.pt", result, config)
    rebuilt = model_from_checkpoint(load_checkpoint(saved))
    assert result.data is not None
    torch.testing.assert_close(embed(rebuilt, result.data.x_test), result.test_embeddings)
    with pytest.raises(ValueError, match='"energy"'):
        TrainConfig().apply_overrides(["model.name=energ"]).validate()
