from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dmlkit.errors import MissingDependencyError
from dmlkit.training import protocol
from dmlkit.training.benchmark_cli import add_command
from dmlkit.training.cli import main
from dmlkit.training.protocol import (
    BenchmarkConfig,
    build_loss_and_miner,
    concatenated_embeddings,
    confidence_interval,
    load_benchmark_config,
    load_protocol_data,
    make_protocol_data,
    quick_config,
    retrieval_scores,
    search_hyperparameters,
    train_fold,
)
from tests.reference import retrieval as ref

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"

TINY: dict[str, Any] = {
    "title": "tiny",
    "data": {"name": "digits", "max_per_class": 16},
    "model": {"name": "mlp", "hidden": [16], "embedding_size": 8, "normalize": True},
    "sampler": {"m": 4, "batch_size": 8},
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": 2,
    "iterations_per_epoch": 2,
    "folds": 2,
    "losses": [{"loss": "contrastive", "library": "both"}],
}


def tiny(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY)
    config.update(changes)
    return config


def benchmark(argv: list[str]) -> int:
    return main(["benchmark", *argv], [add_command])


# The split and the folds ------------------------------------------------------------------------------


def test_the_split_is_class_disjoint_and_covers_every_class() -> None:
    labels = torch.tensor([7, 2, 9, 4, 0, 5, 3, 8, 1, 6, 11, 10] * 3)
    features = torch.arange(len(labels), dtype=torch.float32)[:, None]
    data = make_protocol_data(features, labels, folds=2)
    assert data.trainval_classes == [0, 1, 2, 3, 4, 5] and data.test_classes == [6, 7, 8, 9, 10, 11]
    assert set(data.y_trainval.tolist()) == set(range(6)) and set(data.y_test.tolist()) == set(range(6, 12))
    # every sample lands on exactly one side, with its own label
    rows = sorted(data.x_trainval.flatten().long().tolist() + data.x_test.flatten().long().tolist())
    assert rows == list(range(len(labels)))
    assert torch.equal(labels[data.x_trainval.flatten().long()], data.y_trainval)


def test_an_official_test_split_provides_the_test_half_and_the_cap_applies_to_both() -> None:
    labels = torch.arange(8).repeat(5)
    test_labels = torch.arange(8).repeat(4)
    data = make_protocol_data(
        torch.zeros(40, 2), labels, folds=2, max_per_class=3, test_features=torch.ones(32, 2), test_labels=test_labels
    )
    assert data.test_classes == [4, 5, 6, 7] and bool((data.x_test == 1).all())
    assert sorted(data.y_test.tolist()) == sorted([4, 5, 6, 7] * 3)
    assert sorted(data.y_trainval.tolist()) == sorted([0, 1, 2, 3] * 3)


@pytest.mark.parametrize(("folds", "fold_seed"), [(2, None), (3, None), (3, 5)])
def test_folds_partition_the_training_classes(folds: int, fold_seed: int | None) -> None:
    labels = torch.arange(12).repeat(4)
    data = make_protocol_data(torch.rand(48, 3), labels, folds=folds, fold_seed=fold_seed)
    val_classes = [data.fold_classes(i)[1] for i in range(folds)]
    assert sorted(c for group in val_classes for c in group) == data.trainval_classes
    for i, (train, val) in enumerate(data.folds):
        train_classes, held_out = data.fold_classes(i)
        assert not set(train_classes) & set(held_out) and len(held_out) >= 2
        assert sorted(train.tolist() + val.tolist()) == list(range(len(data.y_trainval)))
    assert sorted(torch.cat([val for _, val in data.folds]).tolist()) == list(range(len(data.y_trainval)))


@pytest.mark.parametrize(
    ("folds", "text"),
    [
        (1, "BenchmarkConfig: `folds` must be an integer >= 2, got 1."),
        (7, "BenchmarkConfig: `folds` must be at most the number of training classes (6), got 7."),
        (4, "BenchmarkConfig: `folds` must be at most half the number of training classes (6 // 2 = 3) so that "
            "every validation fold holds two classes or more, got 4."),
    ],
)
def test_fold_counts_that_do_not_fit_the_classes_are_rejected(folds: int, text: str) -> None:
    with pytest.raises(ValueError, match=f"^{_escape(text)}$"):
        make_protocol_data(torch.rand(24, 2), torch.arange(12).repeat(2), folds=folds)


# Statistics and evaluation -------------------------------------------------------------------------------


def test_confidence_interval_against_a_hand_computation_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    values = [0.61, 0.64, 0.58, 0.66]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = stats.t.ppf(0.975, 3) * std / math.sqrt(4)
    got_mean, got_half = confidence_interval(values)
    assert got_mean == pytest.approx(mean, abs=1e-12) and got_half == pytest.approx(half, abs=1e-12)
    low, high = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(values))
    assert (got_mean - got_half, got_mean + got_half) == pytest.approx((low, high), abs=1e-12)
    assert confidence_interval(values, 0.9)[1] == pytest.approx(stats.t.ppf(0.95, 3) * std / 2, abs=1e-12)
    single_mean, single_half = confidence_interval([0.5])
    assert single_mean == 0.5 and math.isnan(single_half)
    with pytest.raises(ValueError, match=r"^confidence_interval: `values` must be a non-empty sequence, got \[\]\.$"):
        confidence_interval([])


def test_concatenated_evaluation_equals_a_naive_computation() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (30,), generator=g)
    parts = [torch.randn(30, 3, generator=g, dtype=torch.float64) * (i + 1) for i in range(3)]
    naive_rows = []
    for row in range(30):
        concat: list[float] = []
        for part in parts:
            values = part[row].tolist()
            norm = math.sqrt(sum(v * v for v in values))
            concat += [v / norm for v in values]
        naive_rows.append(concat)
    expected = ref.retrieval_metrics(naive_rows, labels.tolist(), naive_rows, labels.tolist(), True)
    got = retrieval_scores(concatenated_embeddings(parts), labels)
    assert got == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(concatenated_embeddings(parts), torch.tensor(naive_rows, dtype=torch.float64))


# The PML control ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        {"loss": "contrastive"},
        {"loss": {"name": "triplet_margin", "margin": 0.1},
         "miner": {"name": "triplet_margin", "margin": 0.1, "type_of_triplets": "semihard"}},
        {"loss": "multi_similarity", "miner": "multi_similarity"},
    ],
)
def test_the_pml_control_gives_the_same_numbers_as_dmlkit(entry: dict[str, Any]) -> None:
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    config = BenchmarkConfig.from_dict(tiny(dtype="float64", losses=[{**entry, "library": "both"}]))
    data = load_protocol_data(config)
    ours, pml = (train_fold(config, e, data, fold=0, seed=3) for e in config.losses)
    assert [e.library for e in config.losses] == ["dmlkit", "pml"]
    assert ours.record["error"] is None and pml.record["error"] is None
    assert len(ours.record["losses"]) == 4 and ours.record["losses"][0] > 0
    assert ours.record["losses"] == pytest.approx(pml.record["losses"], rel=1e-9, abs=1e-12)
    assert ours.record["best_epoch"] == pml.record["best_epoch"]
    assert ours.record["val"] == pytest.approx(pml.record["val"], abs=1e-12)
    assert ours.record["test"] == pytest.approx(pml.record["test"], abs=1e-12)
    assert ours.test_embeddings is not None and pml.test_embeddings is not None
    assert ours.test_embeddings.dtype == torch.float64
    assert torch.allclose(ours.test_embeddings, pml.test_embeddings, atol=1e-9)


def test_a_fold_run_is_reproducible_and_leaves_the_global_random_state_alone() -> None:
    config = BenchmarkConfig.from_dict(tiny(losses=["ntxent"]))
    data = load_protocol_data(config)
    state = torch.get_rng_state()
    first = train_fold(config, config.losses[0], data, fold=1, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_fold(config, config.losses[0], data, fold=1, seed=0)
    assert first.record["losses"] == second.record["losses"] and first.record["test"] == second.record["test"]
    other = train_fold(config, config.losses[0], data, fold=1, seed=1)
    assert other.record["losses"] != first.record["losses"]
    assert first.record["train_classes"] == [0, 1, 2] and first.record["val_classes"] == [3, 4]


def test_the_untrained_reference_is_the_initialisation_of_each_fold_model() -> None:
    # with a learning rate of 0 training leaves the MLP as initialised: its test scores are the reference's
    config = BenchmarkConfig.from_dict(tiny(optimizer={"name": "sgd", "lr": 0.0}, losses=["contrastive"]))
    data = load_protocol_data(config)
    untrained = protocol.reference_results(config, data)["untrained"]
    for fold in (0, 1):
        run = train_fold(config, config.losses[0], data, fold=fold, seed=0)
        for metric, value in run.record["test"].items():
            assert untrained["separate"][metric]["values"][fold] == pytest.approx(value, abs=1e-12)


def test_pml_entries_without_pml_installed_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BenchmarkConfig.from_dict(tiny(losses=[{"loss": "contrastive", "library": "pml"}]))
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning.losses", None)
    with pytest.raises(MissingDependencyError, match="control .`library: pml`. needs the optional package "
                                                     "`pytorch-metric-learning`"):
        build_loss_and_miner(config.losses[0], num_classes=3, embedding_size=8)


def test_loss_sizes_and_searched_values_reach_the_classes_of_both_libraries() -> None:
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    config = BenchmarkConfig.from_dict(tiny(losses=[{"loss": "ArcFaceLoss", "library": "both"},
                                                    {"loss": "circle", "miner": "multi_similarity",
                                                     "library": "pml"}]))
    for entry in config.losses[:2]:
        loss, miner = build_loss_and_miner(entry, {"loss.scale": 30.0}, num_classes=3, embedding_size=8)
        assert type(loss).__module__.startswith("dmlkit" if entry.library == "dmlkit" else "pytorch_metric_learning")
        assert tuple(loss.W.shape) == (8, 3) and loss.scale == 30.0 and miner is None
    loss, miner = build_loss_and_miner(config.losses[2], {"miner.epsilon": 0.3}, num_classes=3, embedding_size=8)
    assert type(miner).__module__.startswith("pytorch_metric_learning") and miner.epsilon == 0.3


# The search ---------------------------------------------------------------------------------------------


def test_the_search_respects_its_budget_and_picks_the_best_trial() -> None:
    pytest.importorskip("optuna", reason="Optuna is not installed")
    calls: list[dict[str, Any]] = []

    def objective(params: dict[str, Any]) -> float:
        calls.append(params)
        if len(calls) == 2:
            return math.nan  # a failed trial counts against the budget but is never the best
        return -((params["x"] - 0.3) ** 2) + (0.1 if params["kind"] == "b" else 0.0)

    space = {"x": {"low": 0.0, "high": 1.0}, "kind": {"choices": ["a", "b"]}}
    seen: list[dict[str, Any]] = []
    out = search_hyperparameters(space, objective, trials=7, seed=1, on_trial=seen.append)
    assert len(calls) == 7 and len(out["trials"]) == 7 and seen == out["trials"]
    assert out["trials"][1]["value"] is None
    finished = [t for t in out["trials"] if t["value"] is not None]
    best = max(finished, key=lambda t: t["value"])
    assert out["best_value"] == best["value"] and out["best_params"] == best["params"]
    again = search_hyperparameters(space, objective, trials=7, seed=1)
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in out["trials"]]  # seeded TPE

    calls.clear()
    resumed = search_hyperparameters(space, objective, trials=9, seed=1, previous=out["trials"])
    assert len(calls) == 2 and len(resumed["trials"]) == 9
    assert resumed["trials"][:7] == out["trials"]


def test_a_searched_entry_trains_its_final_folds_with_the_best_trial(tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="Optuna is not installed")
    entry = {"loss": "contrastive", "search": {"trials": 2, "seed": 0,
                                               "space": {"loss.neg_margin": {"low": 0.2, "high": 1.5}}}}
    config = BenchmarkConfig.from_dict(tiny(losses=[entry], epochs=1))
    results = protocol.run_benchmark(config, tmp_path, progress=False)
    (result,) = results["entries"]
    trials = result["search"]["trials"]
    assert len(trials) == 2 and all(t["value"] is not None for t in trials)
    best = max(trials, key=lambda t: t["value"])
    assert result["params"] == best["params"] == result["search"]["best_params"]
    saved = json.loads((tmp_path / "search" / "ContrastiveLoss.json").read_text())
    assert saved["complete"] and saved["trials"] == trials
    assert "## Hyperparameter searches" in (tmp_path / "results.md").read_text()


# The command --------------------------------------------------------------------------------------------


def test_the_command_end_to_end_and_its_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny(seeds=[0, 1])))
    out = tmp_path / "out"
    assert benchmark([str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| ContrastiveLoss (PML) | pml |" in printed and f"Results: {out / 'results.md'}" in printed
    names = sorted(p.name for p in (out / "cells" / "ContrastiveLoss").iterdir())
    assert names == [f"seed{s}-fold{f}.{ext}" for s in (0, 1) for f in (0, 1) for ext in ("json", "pt")]
    results = json.loads((out / "results.json").read_text())
    assert results["format_version"] == 1 and results["command"].startswith("dmlkit benchmark ")
    first = results["entries"][0]
    assert [e["label"] for e in results["entries"]] == ["ContrastiveLoss", "ContrastiveLoss (PML)"]
    assert first["interval_over"] == "seeds" and first["separate"]["precision_at_1"]["n"] == 2
    seed_means = [s["separate"]["mean_average_precision_at_r"]["mean"] for s in first["per_seed"]]
    expected = confidence_interval(seed_means)
    assert first["separate"]["mean_average_precision_at_r"]["mean"] == pytest.approx(expected[0], abs=1e-12)
    assert first["separate"]["mean_average_precision_at_r"]["half_width"] == pytest.approx(expected[1], abs=1e-12)
    embeddings = [torch.load(out / "cells" / "ContrastiveLoss" / f"seed0-fold{f}.pt") for f in (0, 1)]
    data = load_protocol_data(BenchmarkConfig.from_dict(tiny()))
    concat = retrieval_scores(concatenated_embeddings(embeddings), data.y_test)
    assert first["per_seed"][0]["concatenated"] == pytest.approx(concat, abs=1e-12)
    report = (out / "results.md").read_text()
    assert "## dmlkit and the pytorch-metric-learning control" in report
    assert "| untrained network (reference) | - | no training |" in report
    raw_pixels = ref.retrieval_metrics(
        torch.nn.functional.normalize(data.x_test, dim=1).tolist(), data.y_test.tolist(),
        torch.nn.functional.normalize(data.x_test, dim=1).tolist(), data.y_test.tolist(), True,
    )
    assert results["references"]["raw_input"] == pytest.approx(raw_pixels, abs=1e-6)
    assert results["references"]["untrained"]["separate"]["precision_at_1"]["n"] == 2

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(protocol, "train_fold", no_training)
    assert benchmark([str(path), "--out", str(out), "--quiet", "--only", "PML"]) == 0
    capsys.readouterr()
    again = json.loads((out / "results.json").read_text())
    assert [e["separate"] for e in again["entries"]] == [e["separate"] for e in results["entries"]]


def test_quick_runs_shrink_the_budget_into_their_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny(epochs=3, iterations_per_epoch=50, seeds=[4, 5], losses=["sup_con"])))
    monkeypatch.chdir(tmp_path)
    config = quick_config(load_benchmark_config(path))
    assert (config.epochs, config.iterations_per_epoch, config.seeds, config.data.max_per_class) == (1, 20, [4], 16)
    assert benchmark([str(path), "--quick", "--quiet", "--threads", "1"]) == 0
    assert "Quick run" in capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "benchmarks" / "tiny-quick" / "results.json").read_text())
    assert results["quick"] and results["environment"]["torch_threads"] == 1
    assert len(results["entries"][0]["cells"][0]) and results["config"]["epochs"] == 1


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"losses": [{"loss": "contrastve"}]},
         "Config key 'losses[0].loss.name': Unknown loss 'contrastve'. Did you mean 'contrastive', "),
        ({"losses": [{"loss": "contrastive", "miner": {"name": "multi_similarity", "epsilom": 0.1}}]},
         "Unknown config key 'losses[0].miner.epsilom'. Did you mean 'losses[0].miner.epsilon'"),
        ({"foldz": 2},
         "Unknown benchmark config key 'foldz'. Did you mean 'folds', 'fold_seed'? Known: losses, title, "),
        ({"folds": 1}, "BenchmarkConfig: `folds` must be an integer >= 2, got 1."),
        ({"folds": 6}, "BenchmarkConfig: `folds` must be at most the number of training classes (5), got 6."),
        ({"folds": 3}, "`folds` must be at most half the number of training classes (5 // 2 = 2)"),
        ({"data": {"name": "mnist", "root": "/nonexistent/data"}}, "load_mnist: no file train-images-idx3-ubyte"),
        ({"sampler": {"m": 4, "batch_size": 12}},
         "`sampler.batch_size` must be <= `sampler.m` * the fewest training classes of a fold (4 * 2 = 8), got 12."),
        ({"losses": [{"loss": "contrastive", "library": "pmll"}]},
         "`losses[0].library` must be one of 'dmlkit', 'pml', 'both', got 'pmll'. Did you mean 'pml'?"),
        ({"losses": [{"loss": "contrastive", "search": {"trials": 2, "space": {"loss.margn": {"low": 0, "high": 1}}}}]},
         "'losses[0].search.space.loss.margn': ContrastiveLoss has no argument 'margn'."),
        ({"losses": ["ntxent", {"loss": "sup_con", "label": "NTXentLoss"}]}, "`losses` must be distinct labels"),
    ],
)
def test_bad_configurations_exit_with_2_and_a_clear_message(
    change: dict[str, Any], text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(tiny(**change)))
    assert benchmark([str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmlkit benchmark: error: ") and text in err
    assert not (tmp_path / "out").exists()


def test_the_configuration_round_trips_and_accepts_class_names() -> None:
    config = BenchmarkConfig.from_dict(tiny(losses=[{"loss": "TripletMarginLoss", "miner": "TripletMarginMiner",
                                                     "library": "both", "label": "triplet"}]))
    assert [(e.label, e.loss.name, e.miner.name if e.miner else None) for e in config.losses] == [
        ("triplet", "triplet_margin", "triplet_margin"), ("triplet (PML)", "triplet_margin", "triplet_margin")]
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_the_shipped_configurations_are_valid() -> None:
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"mnist.yaml", "fashion_mnist.yaml", "digits_tiny.yaml"} <= names
    required = {"ContrastiveLoss", "TripletMarginLoss", "MultiSimilarityLoss", "NTXentLoss", "SupConLoss",
                "ProxyAnchorLoss", "ArcFaceLoss", "CircleLoss"}
    for name in ("mnist.yaml", "fashion_mnist.yaml"):
        config = load_benchmark_config(EXAMPLES / name)
        assert config.folds >= 2 and 64 <= config.model.embedding_size <= 128
        for library in ("dmlkit", "pml"):
            classes = {protocol.LOSSES[e.loss.name].__name__ for e in config.losses if e.library == library}
            assert required <= classes
        miners = {(protocol.LOSSES[e.loss.name].__name__, protocol.MINERS[e.miner.name].__name__)
                  for e in config.losses if e.miner is not None}
        assert {("TripletMarginLoss", "TripletMarginMiner"), ("MultiSimilarityLoss", "MultiSimilarityMiner")} <= miners
    assert load_benchmark_config(EXAMPLES / "digits_tiny.yaml").data.name == "digits"


def _escape(text: str) -> str:
    import re

    return re.escape(text)
