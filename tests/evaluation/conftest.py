"""Shared fixtures: the two implementations of the thresholded search's filter pass."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from dmlkit.evaluation import self_search

knn_module = importlib.import_module("dmlkit.evaluation.knn")

FILTERS = [
    "torch",
    pytest.param(
        "numba", marks=pytest.mark.skipif(self_search.compiled_filter() is None, reason="needs numba")
    ),
]


@pytest.fixture(params=FILTERS)
def filter_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Runs the test with the torch filter (numba hidden) or the compiled one; logs each call of the one chosen."""
    calls: list[int] = []
    if request.param == "torch":
        monkeypatch.setattr(self_search, "compiled_filter", lambda: None)
        owner, name = knn_module, "_topk_thresholded"
    else:
        owner, name = self_search, "topk_below_bounds"
    original: Callable[..., object] = getattr(owner, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls
