"""Configured runs: validation classes, early stopping and the best model, schedulers, models by name, MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dmlkit.training import TrainConfig
from dmlkit.training.loop import load_run_data, train
from tests.data._shared import shared_folder

TINY = ["epochs=1", "iterations_per_epoch=2", "model.hidden=[16]", "model.embedding_size=8"]


def test_validation_classes_select_the_best_epoch_and_stop_early(tmp_path: Path) -> None:
    config = TrainConfig().apply_overrides(
        [
            *TINY,
            "epochs=6",
            "data.train_classes=[0, 1, 2]",
            "data.val_classes=[3, 4]",
            "sampler.batch_size=48",
            "validation.patience=1",
            "optimizer.lr=0.05",  # large steps: the validation metric soon stops improving
        ]
    )
    result = train(config, progress=False, run_folder=tmp_path)
    trainer = result.trainer
    assert trainer is not None and trainer.eval_history and trainer.best_epoch is not None
    assert (tmp_path / "eval.jsonl").exists() and (tmp_path / "best.pt").exists()
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == trainer.best_epoch
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, best["models"]["trunk"][key]), key
    values = [r["mean_average_precision_at_r"] for r in trainer.eval_history]
    assert max(values) == values[trainer.best_epoch - 1]
    # with patience 1, training stops at the first evaluation that does not improve
    improving = all(b > a for a, b in zip(values, values[1:], strict=False))
    assert trainer.stopped_early == (not improving)
    if trainer.stopped_early:
        assert trainer.epoch - trainer.best_epoch == 1 and len(values) == trainer.epoch


def test_validation_classes_must_be_disjoint() -> None:
    with pytest.raises(ValueError, match=r"`data.val_classes` must be disjoint from the training and test classes"):
        TrainConfig().apply_overrides(["data.val_classes=[4, 9]"])
    overrides = ["data.train_classes=[0, 1]", "data.val_classes=[2]", "sampler.batch_size=32"]
    parts = load_run_data(TrainConfig().apply_overrides(overrides))
    assert set(parts.y_val.tolist()) == {2} and set(parts.y_train.tolist()) == {0, 1}


def test_step_scheduler_decays_the_learning_rate() -> None:
    config = TrainConfig().apply_overrides(
        [*TINY, "epochs=3", "optimizer.lr=0.01", 'scheduler={"name": "step", "step_size": 1, "gamma": 0.5}']
    )
    result = train(config, progress=False)
    assert result.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**3)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"`model.name` must be \"mlp\", \"cnn\", \"energy\" or an import path"):
        TrainConfig().apply_overrides(["model.name=resnet"])
    with pytest.raises(ValueError, match=r"`autocast` must be null, \"bfloat16\" or \"float16\""):
        TrainConfig().apply_overrides(["autocast=half"])
    with pytest.raises(ValueError, match=r"`instance.crop_scale` must be a number > 0.0 and <= 1.0"):
        TrainConfig().apply_overrides(["instance.crop_scale=1.5"])
    with pytest.raises(KeyError, match="scheduler.name"):
        TrainConfig().apply_overrides(['scheduler={"name": "stepp"}'])


def test_a_model_by_import_path_with_clipping_and_bfloat16() -> None:
    config = TrainConfig().apply_overrides(
        [
            *TINY,
            "model.name=torch.nn:Linear",
            'model.params={"in_features": 64, "out_features": 8}',
            "max_grad_norm=0.5",
            "autocast=bfloat16",
        ]
    )
    result = train(config, progress=False)
    assert isinstance(result.model, torch.nn.Linear)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


def test_mnist_with_the_cnn_and_crops() -> None:
    root = shared_folder("mnist").parent
    config = TrainConfig().apply_overrides(
        [
            *TINY,
            f"data.root={str(root)!r}",
            "data.name=mnist",
            "data.max_per_class=40",
            "model.name=cnn",
            'model.params={"channels": 4, "hidden": 16}',
            "instance.crop_scale=0.6",
        ]
    )
    parts = load_run_data(config)
    assert parts.x_train.shape[1:] == (1, 28, 28) and len(parts.x_train) == 200 and len(parts.x_test) == 200
    result = train(config, progress=False)
    assert result.test_embeddings is not None and result.test_embeddings.shape == (200, 8)
    assert result.history[0]["instance_loss"] > 0
