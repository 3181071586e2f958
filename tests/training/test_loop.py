from __future__ import annotations

import math

import pytest
import torch

from dmlkit.data import class_disjoint_split, load_digits
from dmlkit.evaluation import retrieval_metrics
from dmlkit.training import MLP, TrainConfig
from dmlkit.training.loop import METRICS, embed, evaluate, train

TINY = ["epochs=1", "iterations_per_epoch=3", "model.hidden=[32]", "model.embedding_size=16"]


def test_history_and_metric_keys() -> None:
    result = train(TrainConfig().apply_overrides([*TINY, "epochs=2"]), progress=False)
    assert [entry["epoch"] for entry in result.history] == [1, 2]
    assert all(set(entry) == {"epoch", "loss", "instance_loss", "mined"} for entry in result.history)
    assert all(entry["instance_loss"] > 0 for entry in result.history)
    assert all(entry["mined"] is not None and entry["mined"] >= 0 for entry in result.history)
    assert set(result.before) == set(result.after) == {"precision_at_1", "r_precision", "mean_average_precision_at_r"}
    assert (result.num_train, result.num_test) == (901, 896)
    assert not result.model.training


def test_same_seed_same_run_and_global_rng_untouched() -> None:
    config = TrainConfig().apply_overrides(TINY)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train(config, progress=False)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator was not consumed
    second = train(config, progress=False)
    assert first.history == second.history and first.after == second.after
    other = train(config.apply_overrides(["seed=1"]), progress=False)
    assert other.before != first.before


def test_without_a_miner_all_triplets_are_used() -> None:
    result = train(TrainConfig().apply_overrides([*TINY, "miner=null"]), progress=False)
    assert result.history[0]["mined"] is None and result.history[0]["loss"] > 0


def test_evaluate_is_retrieval_on_the_test_set_against_itself() -> None:
    torch.manual_seed(0)
    model = MLP(6, hidden=(8,), out_features=4, batch_norm=True)
    features, labels = torch.rand(30, 6), torch.arange(3).repeat(10)
    emb = embed(model, features, batch_size=7)
    expected = retrieval_metrics(emb, labels, emb, labels, ref_includes_query=True)
    assert evaluate(model, features, labels, batch_size=7) == pytest.approx(expected)
    assert model.training  # evaluation switches to eval mode only for its own duration
    model.eval()
    torch.testing.assert_close(emb, model(features))


def test_metric_loss_improves_map_at_r_over_the_untrained_model_on_the_training_classes() -> None:
    # the supervised part alone (no instance term), at a learning rate that makes two epochs enough
    config = TrainConfig().apply_overrides(["epochs=2", "instance.weight=0", "optimizer.lr=0.001"])
    features, labels = load_digits()
    train_idx, _ = class_disjoint_split(labels, config.data.train_classes, config.data.test_classes)
    torch.manual_seed(config.seed)
    untrained = MLP(64, config.model.hidden, config.model.embedding_size, normalize=config.model.normalize)
    before = evaluate(untrained, features[train_idx], labels[train_idx])["mean_average_precision_at_r"]
    result = train(config, progress=False)
    after = evaluate(result.model, features[train_idx], labels[train_idx])["mean_average_precision_at_r"]
    # The same seed gives the same initialisation inside train().
    assert result.history[0]["loss"] > result.history[-1]["loss"]
    assert after > before + 0.2, (before, after)


def test_raw_input_metrics_are_retrieval_on_the_test_features_themselves() -> None:
    result = train(TrainConfig().apply_overrides(TINY), progress=False)
    features, labels = load_digits()
    _, test_idx = class_disjoint_split(labels, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    x, y = features[test_idx], labels[test_idx]
    expected = retrieval_metrics(x, y, x, y, ref_includes_query=True)
    assert result.raw_input == pytest.approx({key: expected[key] for key in METRICS})


def test_instance_term_off_trains_on_the_clean_batch_with_the_metric_loss_only() -> None:
    off = TrainConfig().apply_overrides([*TINY, "instance.weight=0"])
    result = train(off, progress=False)
    assert result.history[0]["instance_loss"] is None
    # without the instance term the noise setting is unused: the run is the same whatever it says
    assert train(off.apply_overrides(["instance.noise=0.5"]), progress=False).after == result.after
    on = train(TrainConfig().apply_overrides(TINY), progress=False)
    assert on.history[0]["loss"] > result.history[0]["loss"]  # the instance term adds to the total
    # NT-Xent over 2 x 80 embeddings with one positive each is at most log(2 * 80 - 1) (all similarities equal)
    assert 0 < on.history[0]["instance_loss"] <= math.log(2 * 80 - 1) + 1e-6
    noisier = train(TrainConfig().apply_overrides([*TINY, "instance.noise=0.3"]), progress=False)
    assert noisier.after != on.after


def test_default_demo_improves_retrieval_on_the_unseen_classes() -> None:
    # The demo's promise (seed 0): training on digits 0-4 makes MAP@R on the unseen digits 5-9 better than
    # the untrained network's. Seeds 1 and 2 gain more; the margin here leaves room for float differences.
    result = train(TrainConfig(), progress=False)
    gain = result.after["mean_average_precision_at_r"] - result.before["mean_average_precision_at_r"]
    assert gain > 0.03, (result.before, result.after)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [None, "float16"])
def test_trains_on_cuda_with_noisy_cropped_views(autocast: str | None) -> None:
    overrides = [*TINY, "device=cuda", "instance.noise=0.2", "instance.crop_scale=0.6", f"autocast={autocast}"]
    result = train(TrainConfig().apply_overrides(overrides), progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    assert all(math.isfinite(entry["loss"]) for entry in result.history)
    assert set(result.after) == set(METRICS)
