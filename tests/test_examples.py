"""The example configurations load, and the example scripts import (their runs are measured, not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dmlkit.training.cli import load_config_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["digits.yaml", "mnist.yaml", "fashion_mnist.yaml"])
def test_example_configs_load_and_keep_classes_disjoint(name: str) -> None:
    pytest.importorskip("yaml")
    config = load_config_file(EXAMPLES / name)
    assert not set(config.data.train_classes) & set(config.data.test_classes)
    assert config.data.test_classes == [5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    "name", ["class_disjoint.py", "pet_images.py", "sts_frozen_encoder.py", "think_local.py", "topics_20newsgroups.py"]
)
def test_example_scripts_import(name: str) -> None:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert callable(module.main)
