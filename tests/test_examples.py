"""The example configurations load, and the example scripts import (their runs are measured, not tested)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

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
    assert callable(_load(name).main)


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_class_disjoint_table_averages_seeds_and_counts_those_ahead_of_both_baselines() -> None:
    module = _load("class_disjoint.py")

    def metrics(p1: float, rp: float, mapr: float) -> dict[str, float]:
        return {"precision_at_1": p1, "r_precision": rp, "mean_average_precision_at_r": mapr}

    common = {"config": "examples/x.yaml", "data": "x", "test_classes": [5, 6], "test_samples": 10, "seconds": 2.0}
    baselines = {"untrained": metrics(0.8, 0.5, 0.4), "pca": metrics(0.85, 0.5, 0.4)}
    rows = [{**common, **baselines, "trained": metrics(p1, 0.6, 0.5)} for p1 in (0.9, 0.7)]
    assert [module.beats_both(row) for row in rows] == [True, False]
    lines = module.table(rows).splitlines()
    assert lines[2] == "| x (5, 6; 10 images) | trained (2 s per run) | 0.800 | **0.600** | **0.500** | 1 of 2 |"
    assert lines[3] == "|  | untrained network | 0.800 | 0.500 | 0.400 |  |"
    assert lines[4] == "|  | PCA of raw pixels | **0.850** | 0.500 | 0.400 |  |"
    assert module.table(rows, "folds").splitlines()[2].startswith("| x (2 folds of its training classes) | trained")


def test_class_disjoint_folds_hold_out_each_pair_of_training_classes() -> None:
    pytest.importorskip("yaml")
    module = _load("class_disjoint.py")
    config = load_config_file(EXAMPLES / "mnist.yaml")
    folds = module.fold_overrides(config)
    assert len(folds) == 10
    assert folds[0] == ["data.train_classes=[2, 3, 4]", "data.test_classes=[0, 1]", "sampler.batch_size=48"]
    held = [set(config.apply_overrides(fold).data.test_classes) for fold in folds]
    assert all(len(pair) == 2 and pair <= {0, 1, 2, 3, 4} for pair in held) and len({frozenset(p) for p in held}) == 10
