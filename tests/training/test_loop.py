from __future__ import annotations

import pytest
import torch

from dmlkit.data import class_disjoint_split, load_digits
from dmlkit.evaluation import retrieval_metrics
from dmlkit.training import MLP, TrainConfig
from dmlkit.training.loop import embed, evaluate, train

TINY = ["epochs=1", "iterations_per_epoch=3", "model.hidden=[32]", "model.embedding_size=16"]


def test_history_and_metric_keys() -> None:
    result = train(TrainConfig().apply_overrides([*TINY, "epochs=2"]), progress=False)
    assert [entry["epoch"] for entry in result.history] == [1, 2]
    assert all(set(entry) == {"epoch", "loss", "mined"} for entry in result.history)
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


def test_training_improves_map_at_r_over_the_untrained_model_on_the_training_classes() -> None:
    config = TrainConfig().apply_overrides(["epochs=2"])
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
