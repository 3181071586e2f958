"""Embedding heads: forward values against a plain-loop oracle, gradients, the identity start, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from dmlkit.training.heads import LinearHead, MLPHead, SkipConnectionHead
from tests.reference import heads as oracle


def _layers(module: nn.Module) -> list[tuple[list[list[float]], list[float]]]:
    return [(m.weight.tolist(), m.bias.tolist()) for m in module.modules() if isinstance(m, nn.Linear)]


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.tolist()


@pytest.mark.parametrize("normalize", [False, True])
def test_linear_head_matches_oracle(normalize: bool) -> None:
    torch.manual_seed(0)
    head = LinearHead(5, 3, normalize=normalize).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    [(weight, bias)] = _layers(head)
    expected = [oracle.linear(row, weight, bias) for row in _rows(x)]
    if normalize:
        expected = [oracle.l2_normalize(row) for row in expected]
    torch.testing.assert_close(head(x), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert LinearHead(5).out_features == 5
    assert LinearHead(5, bias=False).linear.bias is None


@pytest.mark.parametrize("hidden", [(), (7,), (6, 4)])
def test_mlp_head_matches_oracle(hidden: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    head = MLPHead(5, hidden=hidden, out_features=3, dropout=0.3).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    expected = [oracle.mlp(row, _layers(head)) for row in _rows(x)]
    torch.testing.assert_close(head(x), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert len(_layers(head)) == len(hidden) + 1


@pytest.mark.parametrize("num_layers", [1, 3])
def test_skip_connection_head_matches_oracle(num_layers: int) -> None:
    torch.manual_seed(2)
    head = SkipConnectionHead(4, num_layers=num_layers).double().eval()
    with torch.no_grad():
        head.gate.copy_(torch.randn(4))
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = [oracle.skip_connection(row, _layers(head), head.gate.tolist()) for row in _rows(x)]
    torch.testing.assert_close(head(x), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    normalized = SkipConnectionHead(4, num_layers=num_layers, normalize=True).double()
    normalized.load_state_dict(head.state_dict())
    torch.testing.assert_close(
        normalized(x), torch.tensor([oracle.l2_normalize(r) for r in expected], dtype=torch.float64)
    )


def test_skip_connection_head_starts_as_identity_and_learns() -> None:
    torch.manual_seed(3)
    head = SkipConnectionHead(6, num_layers=2)
    x = torch.randn(10, 6)
    assert torch.equal(head(x), x)
    target = torch.randn(10, 6)
    loss = ((head(x) - target) ** 2).mean()
    loss.backward()
    # ReZero: only the gate moves at first (the branch's output is multiplied by a zero gate)
    assert head.gate.grad is not None and float(head.gate.grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) == 0 for p in head.branch.parameters() if p.grad is not None)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = ((head(x) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert float(head.branch[1].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearHead(3, 2, normalize=True),
        lambda: MLPHead(3, hidden=(4,), out_features=2, normalize=True),
        lambda: SkipConnectionHead(3, num_layers=2, normalize=True),
    ],
)
def test_gradcheck(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(4)
    head = make().double().eval()
    if isinstance(head, SkipConnectionHead):
        with torch.no_grad():
            head.gate.fill_(0.5)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(head, (x,))


def test_dropout_only_in_training() -> None:
    torch.manual_seed(5)
    head = MLPHead(8, hidden=(16,), out_features=4, dropout=0.5)
    x = torch.randn(32, 8)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"LinearHead: `in_features` must be an integer >= 1, got 0\."):
        LinearHead(0)
    with pytest.raises(ValueError, match=r"LinearHead: `out_features` must be an integer >= 1, got 0\."):
        LinearHead(3, 0)
    with pytest.raises(ValueError, match=r"MLPHead: `dropout` must be a number >= 0 and < 1, got 1\.0\."):
        MLPHead(3, dropout=1.0)
    with pytest.raises(ValueError, match=r"MLPHead: `hidden` must be a sequence of positive integers, got \(4, 0\)\."):
        MLPHead(3, hidden=(4, 0))
    with pytest.raises(ValueError, match=r"SkipConnectionHead: `num_layers` must be an integer >= 1, got 0\."):
        SkipConnectionHead(3, num_layers=0)
    with pytest.raises(TypeError, match=r"SkipConnectionHead: `in_features` must be an integer, got 2\.5\."):
        SkipConnectionHead(2.5)  # type: ignore[arg-type]
