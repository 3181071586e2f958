from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlkit.training import MLP


def test_layers_and_output_shape() -> None:
    model = MLP(6, hidden=(5, 4), out_features=3)
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [m.out_features for m in model.layers if isinstance(m, nn.Linear)] == [5, 4, 3]
    assert model(torch.rand(7, 6)).shape == (7, 3)


def test_batch_norm_and_linear_variants() -> None:
    kinds = [type(layer) for layer in MLP(6, hidden=(5,), out_features=3, batch_norm=True).layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linear = MLP(6, hidden=(), out_features=3)
    assert [type(layer) for layer in linear.layers] == [nn.Linear]
    x = torch.rand(4, 6)
    torch.testing.assert_close(linear(x), x @ linear.layers[0].weight.T + linear.layers[0].bias)


def test_normalize_gives_unit_rows_that_match_the_unnormalized_direction() -> None:
    torch.manual_seed(0)
    raw = MLP(6, hidden=(8,), out_features=3)
    unit = MLP(6, hidden=(8,), out_features=3, normalize=True)
    unit.load_state_dict(raw.state_dict())
    x = torch.rand(5, 6)
    expected = raw(x) / raw(x).norm(dim=1, keepdim=True)
    torch.testing.assert_close(unit(x), expected)
    torch.testing.assert_close(unit(x).norm(dim=1), torch.ones(5))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match=r"^MLP: `in_features` must be an integer >= 1, got 0\.$"):
        MLP(0)
    with pytest.raises(ValueError, match=r"^MLP: `hidden` must be a sequence of positive integers, got \[4, 0\]\.$"):
        MLP(3, hidden=[4, 0])
    with pytest.raises(TypeError, match=r"^MLP: `out_features` must be an integer, got 2\.0\.$"):
        MLP(3, out_features=2.0)  # type: ignore[arg-type]
