"""Benchmark cases: every module here defines ``CASES: dict[str, Callable[[Any], tuple[loss, miner | None]]]``.

A factory receives the library module (``dmlkit`` or ``pytorch_metric_learning``, with ``.losses``,
``.miners``, ``.distances``, ``.reducers`` imported) and returns the loss and an optional miner built the
same way in both libraries. Modules named ``*_class`` hold the classification / proxy losses' cases, whose
factories also take the number of classes and the embedding size (``bench/class_losses.py``). Cases only dmlkit
can build are listed in ``DMLKIT_ONLY``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

Factory = Callable[[Any], tuple[Any, Any]]


def all_cases() -> dict[str, Factory]:
    found: dict[str, Factory] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_class"):  # per-class-count cases, run by bench/class_losses.py
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.update(getattr(module, "CASES", {}))
    return found
