"""The trainer: exact resume, checkpoints, validation and early stopping, modes, options, errors, PML parity."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dmlkit.errors import CorruptFileError
from dmlkit.losses import ContrastiveLoss, CrossBatchMemory, NTXentLoss, TripletMarginLoss
from dmlkit.miners import HDCMiner, MultiSimilarityMiner, TripletMarginMiner
from dmlkit.samplers import MPerClassSampler
from dmlkit.training.modes import (
    CascadedEmbeddings,
    DeepAdversarialMetricLearning,
    MetricLossOnly,
    TrainWithClassifier,
    TwoStreamMetricLoss,
)
from dmlkit.training.steps import SelfSupervisedStep
from dmlkit.training.trainer import CheckpointMismatchError, Trainer, Validation

_ = CrossBatchMemory


def _data(n: int = 96, dim: int = 6, classes: int = 4, seed: int = 0) -> TensorDataset:
    labels = torch.arange(classes).repeat(n // classes)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    features = centres[labels] + torch.randn(n, dim, generator=torch.Generator().manual_seed(seed + 1))
    return TensorDataset(features, labels)


def _net(seed: int, dim: int = 6, out: int = 4, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(dim, 16)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, out)]
    return nn.Sequential(*layers)


def _trainer(seed_model: int, tmp: Path | None = None, **kwargs: Any) -> Trainer:
    data = kwargs.pop("dataset", _data())
    trunk = _net(seed_model)
    optimizer = torch.optim.Adam(trunk.parameters(), lr=0.01)
    defaults: dict[str, Any] = {
        "models": {"trunk": trunk},
        "optimizers": {"trunk_optimizer": optimizer},
        "batch_size": 16,
        "loss_funcs": {"metric_loss": TripletMarginLoss(margin=0.2)},
        "mining_funcs": {"tuple_miner": TripletMarginMiner(margin=0.2, type_of_triplets="semihard")},
        "dataset": data,
        "lr_schedulers": {"trunk_scheduler_by_epoch": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7)},
        "checkpoint_dir": tmp,
        "progress": False,
    }
    defaults.update(kwargs)
    return Trainer(**defaults)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.models["trunk"].state_dict().items()}


@pytest.mark.parametrize("with_sampler", [False, True])
def test_resume_after_epoch_2_ends_with_the_same_weights(tmp_path: Path, with_sampler: bool) -> None:
    data = _data()
    def extra() -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": data, "validation": Validation(_data(seed=3), patience=10)}
        if with_sampler:
            out["sampler"] = MPerClassSampler(data.tensors[1], m=4, batch_size=16, length_before_new_iter=48, seed=5)
        return out

    full = _trainer(0, tmp_path / "full", **extra())
    full.train(num_epochs=4)

    first = _trainer(0, tmp_path / "part", **extra())
    first.train(num_epochs=2)
    torch.manual_seed(1234)  # whatever happened to the global generator in between must not matter
    resumed = _trainer(7, tmp_path / "part", **extra())  # other initial weights: the checkpoint must replace them
    resumed.train(num_epochs=4, resume=tmp_path / "part" / "last.pt")

    for key, value in _weights(full).items():
        assert torch.equal(value, _weights(resumed)[key]), key
    assert resumed.epoch == full.epoch == 4
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert resumed.eval_history == full.eval_history
    assert resumed.best_epoch == full.best_epoch


def test_resume_differs_from_a_fresh_start(tmp_path: Path) -> None:
    """The resume test above can fail: two epochs more from scratch do not give the same weights."""
    full = _trainer(0, tmp_path / "a")
    full.train(num_epochs=4)
    short = _trainer(0, tmp_path / "b")
    short.train(num_epochs=2)
    assert any(not torch.equal(v, _weights(short)[k]) for k, v in _weights(full).items())


def test_checkpoint_files_are_written_atomically_with_best(tmp_path: Path) -> None:
    trainer = _trainer(0, tmp_path, validation=Validation(_data(seed=3)))
    trainer.train(num_epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]
    assert trainer.best_epoch in (1, 2)
    assert [r["epoch"] for r in trainer.eval_history] == [1, 2]
    assert {"precision_at_1", "r_precision", "mean_average_precision_at_r"} <= set(trainer.eval_history[0])


def test_corrupt_and_mismatched_checkpoints_fail_clearly(tmp_path: Path) -> None:
    trainer = _trainer(0, tmp_path)
    trainer.train(num_epochs=1)
    good = (tmp_path / "last.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        _trainer(0).load_checkpoint(broken)
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    with pytest.raises(CorruptFileError, match="not a dmlkit trainer checkpoint"):
        _trainer(0).load_checkpoint(other)
    wider = Trainer(
        {"trunk": _net(0, out=5)},
        {"trunk_optimizer": torch.optim.Adam(_net(0).parameters())},
        batch_size=16,
        loss_funcs={"metric_loss": TripletMarginLoss()},
        dataset=_data(),
        lr_schedulers={},
        progress=False,
    )
    with pytest.raises(CheckpointMismatchError, match="lr_schedulers"):
        wider.load_checkpoint(tmp_path / "last.pt")
    wider.lr_schedulers = {"trunk_scheduler_by_epoch": None}  # type: ignore[dict-item]
    with pytest.raises(CheckpointMismatchError, match=r"models\['trunk'\] does not fit"):
        wider.load_checkpoint(tmp_path / "last.pt")


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    class Falling:
        def __init__(self) -> None:
            self.calls = 0

        def get_accuracy(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            self.calls += 1
            return {"mean_average_precision_at_r": 1.0 / self.calls}

    calculator = Falling()
    trainer = _trainer(0, tmp_path, validation=Validation(_data(seed=3), patience=2, calculator=calculator))
    trainer.train(num_epochs=10)
    assert trainer.stopped_early and trainer.epoch == 3 and trainer.best_epoch == 1
    assert calculator.calls == 3
    # best.pt holds epoch 1, last.pt epoch 3
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def test_training_reduces_the_loss_and_improves_retrieval() -> None:
    trainer = _trainer(0, mining_funcs={}, lr_schedulers={}, validation=Validation(_data(seed=3)))
    before = trainer.embed(_data(seed=3))
    trainer.train(num_epochs=8)
    first = sum(r["loss"] for r in trainer.history[:6]) / 6
    last = sum(r["loss"] for r in trainer.history[-6:]) / 6
    assert last < 0.5 * first
    calculator = trainer.validation.calculator  # type: ignore[union-attr]
    untrained = calculator.get_accuracy(*before, ref_includes_query=True)["mean_average_precision_at_r"]
    assert trainer.eval_history[-1]["mean_average_precision_at_r"] > untrained + 0.1
    assert before[0].shape == (96, 4) and torch.equal(before[1], _data(seed=3).tensors[1])


def test_loss_weights_and_classifier_mode() -> None:
    data = _data()
    trunk, classifier = _net(0), nn.Linear(4, 4)
    seen: list[dict[str, float]] = []
    trainer = TrainWithClassifier(
        models={"trunk": trunk, "classifier": classifier},
        optimizers={
            "trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1),
            "classifier_optimizer": torch.optim.SGD(classifier.parameters(), lr=0.1),
        },
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss(), "classifier_loss": nn.CrossEntropyLoss()},
        dataset=data,
        loss_weights={"metric_loss": 0, "classifier_loss": 0.5},
        end_of_iteration_hook=lambda t: seen.append(dict(t.losses)),
        progress=False,
    )
    trainer.train(num_epochs=1)
    assert all(set(s) == {"classifier_loss", "total_loss"} for s in seen) and len(seen) == 6
    # "total_loss" is the weighted sum, as in pytorch-metric-learning's trainer.losses
    assert all(s["total_loss"] == pytest.approx(0.5 * s["classifier_loss"]) for s in seen)
    assert trainer.history[0]["loss"] == pytest.approx(0.5 * trainer.history[0]["classifier_loss"])
    assert "total_loss" not in trainer.history[0]


def test_frozen_models_and_batchnorm_are_not_updated() -> None:
    data = _data()
    trunk, embedder = _net(0, batch_norm=True), nn.Linear(4, 3)
    start_trunk = copy.deepcopy(trunk.state_dict())
    start_embedder = copy.deepcopy(embedder.state_dict())
    trainer = MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={
            "trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1),
            "embedder_optimizer": torch.optim.SGD(embedder.parameters(), lr=0.1),
        },
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=data,
        freeze_these=("embedder",),
        freeze_trunk_batchnorm=True,
        progress=False,
    )
    trainer.train(num_epochs=1)
    for key, value in embedder.state_dict().items():
        assert torch.equal(value, start_embedder[key])
    bn = trunk[1]
    assert torch.equal(bn.running_mean, start_trunk["1.running_mean"])
    assert not torch.equal(trunk[0].weight, start_trunk["0.weight"])


def test_max_grad_norm_clips_the_global_norm() -> None:
    norms: list[float] = []

    def record(trainer: Trainer) -> None:
        grads = [p.grad for p in trainer.models["trunk"].parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer = _trainer(0, max_grad_norm=1e-3, end_of_iteration_hook=record, mining_funcs={})
    trainer.train(num_epochs=1)
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_float16_autocast_scales_the_loss_and_clips_true_gradients(tmp_path: Path, device: str) -> None:
    norms: list[float] = []

    def record(trainer: Trainer) -> None:
        grads = [p.grad for p in trainer.models["trunk"].parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trunk = _net(0).to(device)
    optimizer = torch.optim.Adam(trunk.parameters(), lr=0.01)
    trainer = _trainer(
        0, tmp_path, models={"trunk": trunk}, optimizers={"trunk_optimizer": optimizer}, lr_schedulers={},
        autocast_dtype=torch.float16, mining_funcs={}, max_grad_norm=1e-3, end_of_iteration_hook=record,
    )
    assert trainer.grad_scaler is not None and trainer.grad_scaler.get_scale() == 2.0**16
    before = _weights(trainer)
    trainer.train(num_epochs=2)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.history)
    # the hook runs after unscaling and clipping: the gradients it sees are the true, clipped ones, except
    # on the few first steps where the initial scale (2^16) overflows: those steps are skipped, the scale halved
    finite = [n for n in norms if n == n and n != float("inf")]
    assert len(finite) >= len(norms) - 4 and max(finite) <= 1e-3 * (1 + 1e-3)
    assert any(not torch.equal(before[k], v) for k, v in _weights(trainer).items())
    scale = trainer.grad_scaler.get_scale()
    resumed = _trainer(
        0, tmp_path, models={"trunk": _net(0).to(device)}, lr_schedulers={}, autocast_dtype=torch.float16,
        mining_funcs={}, optimizers={"trunk_optimizer": torch.optim.Adam(_net(0).parameters(), lr=0.01)},
    )
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert resumed.grad_scaler is not None and resumed.grad_scaler.get_scale() == scale


def test_no_grad_scaler_outside_float16() -> None:
    assert _trainer(0, autocast_dtype=torch.bfloat16, mining_funcs={}).grad_scaler is None
    assert _trainer(0, mining_funcs={}).grad_scaler is None


def test_bfloat16_autocast_stays_finite() -> None:
    trainer = _trainer(0, autocast_dtype=torch.bfloat16, mining_funcs={})
    trainer.train(num_epochs=2)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.history)
    assert trainer.models["trunk"][0].weight.dtype == torch.float32


def test_cascaded_two_stream_self_supervised_and_adversarial_modes_train() -> None:
    data = _data()
    trunk = _net(0, out=6)
    cascaded = CascadedEmbeddings(
        [2, 4],
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=0.01)},
        batch_size=16,
        loss_funcs={"metric_loss_0": ContrastiveLoss(), "metric_loss_1": TripletMarginLoss()},
        mining_funcs={"tuple_miner_0": MultiSimilarityMiner(), "tuple_miner_1": HDCMiner(filter_percentage=0.5)},
        dataset=data,
        progress=False,
    )
    cascaded.train(num_epochs=1)
    assert {"metric_loss_0", "metric_loss_1"} <= set(cascaded.history[0])

    g = torch.Generator().manual_seed(0)
    anchors, positives = torch.randn(48, 6, generator=g), torch.randn(48, 6, generator=g)
    two = TwoStreamMetricLoss(
        models={"trunk": _net(0)},
        optimizers={},
        batch_size=16,
        loss_funcs={"metric_loss": TripletMarginLoss()},
        dataset=TensorDataset(anchors, positives, torch.arange(48)),
        progress=False,
    )
    two.train(num_epochs=1)
    assert len(two.history) == 3 and two.history[0]["metric_loss"] > 0

    trunk = _net(0)
    simclr = Trainer(
        {"trunk": trunk},
        {"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=0.01)},
        batch_size=16,
        loss_funcs={"metric_loss": NTXentLoss()},
        dataset=data,
        step=SelfSupervisedStep(lambda x, gen: x + 0.1 * torch.randn(x.shape, generator=gen)),
        progress=False,
    )
    simclr.train(num_epochs=2)
    assert simclr.history[-1]["metric_loss"] < simclr.history[0]["metric_loss"]

    trunk, generator = _net(0, out=8), nn.Linear(24, 8)
    embedder = nn.Linear(8, 4)
    start_generator = copy.deepcopy(generator.state_dict())
    daml = DeepAdversarialMetricLearning(
        metric_alone_epochs=1,
        g_alone_epochs=1,
        g_triplets_per_anchor=2,
        models={"trunk": trunk, "embedder": embedder, "generator": generator},
        optimizers={
            "trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.05),
            "embedder_optimizer": torch.optim.SGD(embedder.parameters(), lr=0.05),
            "generator_optimizer": torch.optim.SGD(generator.parameters(), lr=0.05),
        },
        batch_size=16,
        loss_funcs={
            "metric_loss": TripletMarginLoss(),
            "synth_loss": TripletMarginLoss(),
            "g_adv_loss": TripletMarginLoss(),
        },
        dataset=data,
        progress=False,
    )
    daml.train(num_epochs=1)  # metric alone: the generator is untouched
    assert all(torch.equal(v, start_generator[k]) for k, v in generator.state_dict().items())
    trunk_after_metric = copy.deepcopy(trunk.state_dict())
    daml.train(start_epoch=2, num_epochs=2)  # generator alone: the trunk is untouched
    assert all(torch.equal(v, trunk_after_metric[k]) for k, v in trunk.state_dict().items())
    assert not all(torch.equal(v, start_generator[k]) for k, v in generator.state_dict().items())
    daml.train(start_epoch=3, num_epochs=3)
    assert {"g_adv_loss", "g_hard_loss", "g_reg_loss", "synth_loss", "metric_loss"} <= set(daml.history[-1])


def test_adversarial_term_is_the_reversed_triplet_hinge() -> None:
    from dmlkit.training.steps import _reversed_triplet_loss
    from dmlkit.types import Triplets

    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, 0.0]], dtype=torch.float64)
    loss = TripletMarginLoss(margin=0.1, distance=__import__("dmlkit").distances.LpDistance(normalize_embeddings=False))
    value = _reversed_triplet_loss(loss, emb, torch.tensor([0, 0, 1]), Triplets(*(torch.tensor([i]) for i in range(3))))
    # [d(a, n~) - d(a, p) - margin]_+ = [0.3 - 1.0 - 0.1]_+ = 0; with the synthetic far away it is positive
    assert float(value) == 0.0
    emb[2, 0] = 1.5
    value = _reversed_triplet_loss(loss, emb, torch.tensor([0, 0, 1]), Triplets(*(torch.tensor([i]) for i in range(3))))
    assert float(value) == pytest.approx(1.5 - 1.0 - 0.1)


def test_unknown_keys_and_bad_arguments_raise() -> None:
    with pytest.raises(KeyError, match="unknown loss_funcs key 'metric_los'.*Did you mean 'metric_loss'"):
        _trainer(0, loss_funcs={"metric_los": ContrastiveLoss()})
    with pytest.raises(KeyError, match="must include 'metric_loss'"):
        _trainer(0, loss_funcs={})
    with pytest.raises(KeyError, match="unknown optimizers key 'trunk_optimiser'"):
        _trainer(0, optimizers={"trunk_optimiser": torch.optim.SGD(_net(0).parameters(), lr=1)})
    with pytest.raises(KeyError, match="unknown loss_weights key"):
        _trainer(0, loss_weights={"metric": 1})
    with pytest.raises(ValueError, match=r"Trainer: `batch_size` must be an integer >= 1, got 0"):
        _trainer(0, batch_size=0)
    with pytest.raises(ValueError, match="the loader yields no batch"):
        _trainer(0, batch_size=200).train(num_epochs=1)
    with pytest.raises(ValueError, match="set_min_label_to_zero needs every label"):
        _trainer(0, set_min_label_to_zero=True)


def test_label_mapping_and_hierarchy_levels() -> None:
    features = _data().tensors[0]
    fine = torch.arange(4).repeat(24) * 10 + 7
    coarse = fine // 20
    seen: list[torch.Tensor] = []

    class Spy(ContrastiveLoss):
        def forward(self, embeddings, labels=None, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(labels.clone())
            return super().forward(embeddings, labels, *args, **kwargs)

    trainer = _trainer(
        0,
        dataset=TensorDataset(features, torch.stack([coarse, fine], dim=1)),
        loss_funcs={"metric_loss": Spy()},
        mining_funcs={},
        label_hierarchy_level=1,
        dataset_labels=torch.stack([coarse, fine], dim=1),
        set_min_label_to_zero=True,
    )
    trainer.train(num_epochs=1)
    assert set(torch.cat(seen).tolist()) == {0, 1, 2, 3}
    # as in pytorch-metric-learning, dataset_labels alone maps nothing
    seen.clear()
    _trainer(
        0,
        dataset=TensorDataset(features, torch.stack([coarse, fine], dim=1)),
        loss_funcs={"metric_loss": Spy()},
        mining_funcs={},
        label_hierarchy_level=1,
        dataset_labels=torch.stack([coarse, fine], dim=1),
    ).train(num_epochs=1)
    assert set(torch.cat(seen).tolist()) == {7, 17, 27, 37}


def test_same_weights_as_pml_metric_loss_only_for_one_epoch() -> None:
    pml_trainers = pytest.importorskip("pytorch_metric_learning.trainers")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    data = _data()
    sampler = MPerClassSampler(data.tensors[1], m=4, batch_size=16, length_before_new_iter=96, seed=2)
    results = []
    for trainer_cls, loss in ((MetricLossOnly, TripletMarginLoss(0.2)), (pml_trainers.MetricLossOnly, None)):
        trunk = _net(0).double()
        loss = loss if loss is not None else pml_losses.TripletMarginLoss(0.2)
        trainer = trainer_cls(
            models={"trunk": trunk},
            optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.05)},
            batch_size=16,
            loss_funcs={"metric_loss": loss},
            dataset=TensorDataset(data.tensors[0].double(), data.tensors[1]),
            sampler=sampler,
            dataloader_num_workers=0,
            data_device=torch.device("cpu"),
            **({"progress": False} if trainer_cls is MetricLossOnly else {}),
        )
        sampler.set_epoch(1)
        trainer.train(num_epochs=1)
        results.append(trunk.state_dict())
    for key, value in results[0].items():
        torch.testing.assert_close(value, results[1][key], rtol=0, atol=1e-10)


def test_pml_trainers_path_has_every_pml_trainer() -> None:
    pml_trainers = pytest.importorskip("pytorch_metric_learning.trainers")
    import dmlkit.trainers

    names = {n for n in dir(pml_trainers) if n[0].isupper()}
    assert names <= set(dmlkit.trainers.__all__)
    assert issubclass(dmlkit.trainers.MetricLossOnly, dmlkit.trainers.BaseTrainer)


def test_loss_parameters_get_their_own_optimizer_and_are_checkpointed(tmp_path: Path) -> None:
    from dmlkit.losses import ProxyAnchorLoss

    loss = ProxyAnchorLoss(num_classes=4, embedding_size=4)
    start = loss.proxies.detach().clone()
    trunk = _net(0)
    trainer = Trainer(
        {"trunk": trunk},
        {
            "trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.01),
            "metric_loss_optimizer": torch.optim.SGD(loss.parameters(), lr=0.5),
        },
        batch_size=16,
        loss_funcs={"metric_loss": loss},
        dataset=_data(),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    trainer.train(num_epochs=1)
    assert not torch.equal(loss.proxies, start)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(saved["loss_funcs"]["metric_loss"]["proxies"], loss.proxies)
    assert set(saved["optimizers"]) == {"trunk_optimizer", "metric_loss_optimizer"}


def _metric_trainer(trunk: nn.Module, **kwargs: Any) -> MetricLossOnly:
    return MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1)},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        progress=False,
        **kwargs,
    )


def test_without_a_seed_the_callers_global_seed_decides_and_is_not_reset() -> None:
    def run(global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = nn.Sequential(_net(0), nn.Dropout(0.5))
        torch.manual_seed(global_seed)
        _metric_trainer(trunk).train(num_epochs=1)
        return trunk[0][0].weight.detach().clone(), torch.rand(1)

    (w1, after1), (w1_again, after1_again), (w2, _) = run(1), run(1), run(2)
    assert torch.equal(w1, w1_again) and torch.equal(after1, after1_again)  # reproducible from the caller's seed
    assert not torch.equal(w1, w2)  # and the seed matters: several seeds are several runs


def test_parameters_frozen_by_the_caller_stay_frozen() -> None:
    trunk = _net(0)
    first = trunk[0]
    first.weight.requires_grad_(False)
    before = first.weight.detach().clone()
    trainer = _metric_trainer(trunk)
    first.bias.requires_grad_(False)  # frozen after the trainer was built: also respected
    bias = first.bias.detach().clone()
    trainer.train(num_epochs=2)
    assert not first.weight.requires_grad and torch.equal(first.weight, before)
    assert not first.bias.requires_grad and torch.equal(first.bias, bias)
    assert trunk[2].weight.requires_grad


def test_freeze_these_and_phases_switch_back_on_only_what_they_switched_off() -> None:
    trunk, generator, embedder = _net(0, out=8), nn.Linear(24, 8), nn.Linear(8, 4)
    embedder.bias.requires_grad_(False)  # the caller's choice
    DeepAdversarialMetricLearning(
        metric_alone_epochs=1,
        g_alone_epochs=1,
        g_triplets_per_anchor=2,
        models={"trunk": trunk, "embedder": embedder, "generator": generator},
        optimizers={"embedder_optimizer": torch.optim.SGD(embedder.parameters(), lr=0.05)},
        batch_size=16,
        loss_funcs={"metric_loss": TripletMarginLoss(), "synth_loss": TripletMarginLoss(),
                    "g_adv_loss": TripletMarginLoss()},
        dataset=_data(),
        progress=False,
    ).train(num_epochs=3)  # epoch 2 freezes the embedder, epoch 3 unfreezes it
    assert embedder.weight.requires_grad and not embedder.bias.requires_grad


def test_models_without_an_optimizer_do_not_accumulate_gradients() -> None:
    trunk, embedder = _net(0), nn.Linear(4, 3)
    norms: list[float] = []
    trainer = MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.0)},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        sampler=torch.utils.data.SequentialSampler(_data()),
        end_of_iteration_hook=lambda t: norms.append(float(embedder.weight.grad.norm())),
        progress=False,
    )
    trainer.train(num_epochs=2)
    # nothing moves (lr 0) and the data order repeats, so each epoch's gradients are the same, not summed
    assert norms[:6] == pytest.approx(norms[6:])


def test_pml_hook_methods() -> None:
    trunk = _net(0)
    optimizer = torch.optim.SGD(trunk.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    calls: list[int] = []

    def end_of_epoch(trainer: Trainer) -> None:
        calls.append(trainer.get_global_iteration())
        trainer.step_lr_plateau_schedulers(1.0)

    trainer = MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": optimizer},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        lr_schedulers={"trunk_scheduler_by_plateau": plateau},
        end_of_epoch_hook=end_of_epoch,
        progress=False,
    )
    assert trainer.iterations_per_epoch is None
    trainer.train(num_epochs=3)
    assert calls == [6, 12, 18] and trainer.iterations_per_epoch == 6
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # no improvement after the first


def _first_rows(trainer_kwargs: dict[str, Any], epochs: int, **train_kwargs: Any) -> list[float]:
    """The first feature of the first row of every batch the trainer trains on."""
    firsts: list[float] = []
    trunk = _net(0)
    trainer = MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.0)},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        data_and_label_getter=lambda batch: (firsts.append(float(batch[0][0, 0])) or batch[0], batch[1]),
        progress=False,
        **trainer_kwargs,
    )
    trainer.train(num_epochs=epochs, **train_kwargs)
    return firsts


def test_an_epoch_shorter_than_the_loader_leaves_off_where_the_next_goes_on() -> None:
    data = _data()
    sequential = torch.utils.data.SequentialSampler(data)
    firsts = _first_rows({"sampler": sequential, "iterations_per_epoch": 4}, epochs=2)
    rows = data.tensors[0][:, 0].tolist()
    # 6 batches of 16 per pass: epoch 1 takes batches 0-3, epoch 2 batches 4, 5 and then 0, 1 of the next pass
    assert firsts == pytest.approx([rows[16 * b] for b in (0, 1, 2, 3, 4, 5, 0, 1)])


def test_resuming_mid_pass_continues_the_same_stream(tmp_path: Path) -> None:
    kwargs = {"iterations_per_epoch": 4, "seed": 3, "checkpoint_dir": tmp_path}
    whole = _first_rows(kwargs, epochs=3)
    assert len(set(whole[:6])) == 6  # a shuffled pass of 6 distinct batches
    first_part = _first_rows(kwargs, epochs=1)  # its last.pt is written after epoch 1, mid-pass
    assert whole[:4] == first_part
    resumed = _first_rows({**kwargs, "checkpoint_dir": tmp_path / "second"}, epochs=3, resume=tmp_path / "last.pt")
    assert resumed == whole[4:]


def test_a_batch_sampler_given_as_sampler_makes_the_batches() -> None:
    data = _data()
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(data), 20, drop_last=True)
    firsts = _first_rows({"sampler": batches}, epochs=1)
    rows = data.tensors[0][:, 0].tolist()
    assert firsts == pytest.approx([rows[20 * b] for b in range(4)])


def test_a_pml_style_subclass_overriding_calculate_loss_is_used() -> None:
    calls: list[int] = []

    class HalfMetric(MetricLossOnly):
        def calculate_loss(self, curr_batch: tuple[Any, torch.Tensor]) -> None:
            data, labels = curr_batch
            calls.append(len(labels))
            embeddings = self.compute_embeddings(data)
            indices_tuple = self.maybe_mine_embeddings(embeddings, labels)
            self.losses["metric_loss"] = 0.5 * self.maybe_get_metric_loss(embeddings, labels, indices_tuple)
            self.losses["extra_loss"] = embeddings.pow(2).mean()  # a name without a weight counts once

    trunk, twin = _net(0), _net(0)
    seen: list[dict[str, float]] = []
    HalfMetric(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1)},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        seed=0,
        end_of_iteration_hook=lambda t: seen.append(dict(t.losses)),
        progress=False,
    ).train(num_epochs=1)
    assert calls == [16] * 6
    assert all(s["total_loss"] == pytest.approx(s["metric_loss"] + s["extra_loss"]) for s in seen)
    assert not torch.equal(trunk[0].weight, twin[0].weight)


def test_two_stream_with_a_pair_miner_matches_pml() -> None:
    """The pair miner's pairs reach the loss as pairs, shifted into the second stream, as in PML."""
    pml_trainers = pytest.importorskip("pytorch_metric_learning.trainers")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(8).repeat(6)
    anchors = torch.randn(48, 6, generator=g, dtype=torch.float64) + labels[:, None] * 0.1
    others = torch.randn(48, 6, generator=g, dtype=torch.float64) + labels[:, None] * 0.1
    data = TensorDataset(anchors, others, labels)
    weights = []
    for trainer_cls, loss, miner in (
        (TwoStreamMetricLoss, ContrastiveLoss(), MultiSimilarityMiner(0.5)),
        (pml_trainers.TwoStreamMetricLoss, pml_losses.ContrastiveLoss(), pml_miners.MultiSimilarityMiner(0.5)),
    ):
        trunk = _net(0).double()
        trainer_cls(
            models={"trunk": trunk},
            optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1)},
            batch_size=16,
            loss_funcs={"metric_loss": loss},
            mining_funcs={"tuple_miner": miner},
            dataset=data,
            sampler=torch.utils.data.SequentialSampler(data),
            dataloader_num_workers=0,
        ).train(num_epochs=1)
        weights.append(trunk[0].weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-10)


def test_the_default_embedder_is_added_to_the_callers_models_as_in_pml() -> None:
    models = {"trunk": _net(0)}
    trainer = _metric_trainer(models["trunk"])
    assert "embedder" in trainer.models
    MetricLossOnly(
        models=models,
        optimizers={},
        batch_size=16,
        loss_funcs={"metric_loss": ContrastiveLoss()},
        dataset=_data(),
        progress=False,
    )
    assert isinstance(models["embedder"], nn.Identity)


def test_adversarial_mode_takes_every_triplet_and_a_subset_batch_miner() -> None:
    """PML's DeepAdversarialMetricLearning accepts g_triplets_per_anchor="all" and a subset_batch_miner."""
    trunk, generator, embedder = _net(0, out=8), nn.Linear(24, 8), nn.Linear(8, 4)
    seen: list[dict[str, float]] = []
    DeepAdversarialMetricLearning(
        g_triplets_per_anchor="all",
        models={"trunk": trunk, "embedder": embedder, "generator": generator},
        optimizers={"generator_optimizer": torch.optim.SGD(generator.parameters(), lr=0.05)},
        batch_size=16,
        loss_funcs={
            "metric_loss": TripletMarginLoss(),
            "synth_loss": TripletMarginLoss(),
            "g_adv_loss": TripletMarginLoss(),
        },
        mining_funcs={"subset_batch_miner": lambda emb, labels: torch.arange(12)},
        dataset=_data(),
        end_of_iteration_hook=lambda t: seen.append(dict(t.losses)),
        progress=False,
    ).train(num_epochs=1)
    assert len(seen) == 6 and all(s["g_adv_loss"] != 0 for s in seen)
    with pytest.raises(ValueError, match="g_triplets_per_anchor"):
        DeepAdversarialMetricLearning(g_triplets_per_anchor=0, models={"trunk": trunk}, optimizers={},
                                      batch_size=16, loss_funcs={}, dataset=_data())
