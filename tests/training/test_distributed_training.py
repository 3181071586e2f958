"""The Trainer and ``dmlkit train`` on 2 CPU processes (gloo) against one process on the same global batches.

One process group is spawned for the module. Each worker trains the Trainer cases with half of every global
batch, checks what only rank 0 may write, embeds a data set in two parts, draws from a
DistributedMPerClassSampler with its process-group defaults, then leaves the group and runs ``dmlkit train``
with torchrun's environment variables (the CLI initialises the group itself). The one-process runs happen in
the test process.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from dmlkit.losses import NormalizedSoftmaxLoss, TripletMarginLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.samplers import DistributedMPerClassSampler, MPerClassSampler
from dmlkit.training import Trainer, Validation
from dmlkit.training.cli import main
from dmlkit.training.config import TrainConfig
from dmlkit.training.loop import train
from dmlkit.wrappers.distributed import DistributedLossWrapper, DistributedMinerWrapper

WORLD = 2
BATCH = 8  # the global batch; each of the 2 processes trains on 4
CLASSES = 6
TOL = 1e-5
CLI_ARGS = [
    "train",
    "--quiet",
    "--name",
    "run",
    "--set",
    "data.max_per_class=30",
    "--set",
    "data.val_classes=[5]",
    "--set",
    "data.test_classes=[6,7,8,9]",
    "--set",
    "model.hidden=[16]",
    "--set",
    "model.embedding_size=8",
    "--set",
    "sampler.m=4",
    "--set",
    "sampler.batch_size=16",
    "--set",
    "epochs=2",
    "--set",
    "iterations_per_epoch=3",
    # noise-free views: the instance term is deterministic, so one process and two give the same run
    "--set",
    "instance.weight=0.5",
    "--set",
    "instance.noise=0",
    "--set",
    "output.report=false",
]


class _Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def log(self, stream: str, record: Any) -> None:
        self.records.append((stream, dict(record)))


def _data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat(8)
    train = TensorDataset(torch.randn(len(labels), 6, generator=g) + labels.unsqueeze(1) * 0.3, labels)
    val_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # 9 rows: the two processes embed 5 and 4
    return train, TensorDataset(torch.randn(9, 6, generator=g), val_labels)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _trainer(case: str, rank: int, world: int, folder: Path | None) -> Trainer:
    """The same training on ``world`` processes (each with ``BATCH // world`` rows) or on one."""
    train, val = _data()
    # rank 1 starts from other weights: the trainer copies rank 0's before training
    model = _model(rank)
    batch = BATCH // world
    labels = train.tensors[1]
    kwargs: dict[str, Any] = {}
    if case == "m_per_class":
        loss: nn.Module = TripletMarginLoss(margin=0.3)
        miner: Any = TripletMarginMiner(margin=0.3, type_of_triplets="all")
        if world > 1:
            loss, miner = DistributedLossWrapper(loss), DistributedMinerWrapper(miner)
            kwargs["sampler"] = DistributedMPerClassSampler(labels, 2, batch, 3 * batch, seed=1)
        else:
            kwargs["sampler"] = MPerClassSampler(labels, 2, batch, 3 * batch, seed=1)
        optimizers = {"trunk_optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)}
        kwargs["mining_funcs"] = {"tuple_miner": miner}
    else:
        # learned proxies with their own optimizer, the efficient mode, the default sampler, clipping
        torch.manual_seed(10 + rank)
        proxies = NormalizedSoftmaxLoss(num_classes=CLASSES, embedding_size=4)
        loss = DistributedLossWrapper(proxies, efficient=True) if world > 1 else proxies
        optimizers = {
            "trunk_optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
            "metric_loss_optimizer": torch.optim.SGD(proxies.parameters(), lr=0.05),
        }
        kwargs["max_grad_norm"] = 1.0
    return Trainer(
        {"trunk": model},
        optimizers,
        batch,
        {"metric_loss": loss},
        train,
        validation=Validation(val, batch_size=2),
        seed=3,
        checkpoint_dir=folder,
        logger=_Recorder(),
        progress=False,
        **kwargs,
    )


def _summary(trainer: Trainer) -> dict[str, Any]:
    weights = {k: v.detach().clone() for k, v in trainer.models["trunk"].state_dict().items()}
    for name, loss in trainer.loss_funcs.items():
        for key, value in loss.state_dict().items():
            weights[f"{name}.{key.removeprefix('loss.')}"] = value.detach().clone()
    logger = trainer.logger
    assert isinstance(logger, _Recorder)
    return {
        "weights": weights,
        "losses": [record["loss"] for record in trainer.history],
        "eval": [{k: v for k, v in r.items() if k != "split"} for r in trainer.eval_history],
        "logged": Counter(stream for stream, _ in logger.records),
    }


def _worker(rank: int, init_method: str, folder: str, port: int) -> None:
    root = Path(folder)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        for case in ("m_per_class", "proxies"):
            trainer = _trainer(case, rank, WORLD, root / f"{case}-rank{rank}")
            trainer.train(num_epochs=2)
            out[case] = _summary(trainer)
            checkpoints = root / f"{case}-rank{rank}"
            out[case]["files"] = sorted(p.name for p in checkpoints.iterdir()) if checkpoints.exists() else []
        # a data set of 7 rows embedded in two parts (4 and 3) and gathered
        trainer = _trainer("m_per_class", 0, WORLD, None)  # the same weights on both processes
        x = torch.randn(7, 6, generator=torch.Generator().manual_seed(5))
        out["embed"] = trainer.embed(TensorDataset(x, torch.arange(7)), batch_size=3)
        out["model"] = trainer.models["trunk"].state_dict()
        sampler = DistributedMPerClassSampler(torch.arange(CLASSES).repeat(4), 2, 4, 12)
        out["sampler"] = (sampler.num_replicas, sampler.rank, list(sampler), list(sampler))
        try:
            train(TrainConfig().apply_overrides(["sampler.m=4", "sampler.batch_size=12"]), progress=False)
        except ValueError as exc:
            out["split_error"] = str(exc)
    finally:
        dist.destroy_process_group()
    # dmlkit train as torchrun starts it: the CLI initialises (and destroys) the process group
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": WORLD, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()})
    out["cli"] = main([*CLI_ARGS, "--out", str(root / "runs")])
    out["cli_group_left"] = not dist.is_initialized()
    torch.save(out, root / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available on this platform")
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("distributed_training")
    init_method = (folder / "store").resolve().as_uri()
    context = mp.start_processes(
        _worker, args=(init_method, str(folder), _free_port()), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process run did not finish in 240 s")
    return folder, [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("case", ["m_per_class", "proxies"])
def test_two_processes_reach_the_weights_of_one_process_on_the_same_global_batches(
    runs: tuple[Path, list[dict[str, Any]]], case: str, tmp_path: Path
) -> None:
    _, found = runs
    single = _trainer(case, 0, 1, tmp_path)
    single.train(num_epochs=2)
    expected = _summary(single)
    for rank, result in enumerate(found):
        got = result[case]
        assert _max_difference(got["weights"], expected["weights"]) < TOL, rank
        assert got["losses"] == pytest.approx(expected["losses"], abs=TOL)
        assert len(got["eval"]) == 2
        for mine, theirs in zip(got["eval"], expected["eval"], strict=True):
            assert mine == pytest.approx(theirs, abs=TOL)
    # the weights moved: the comparison is not between two untrained models
    assert _max_difference(expected["weights"], _summary(_trainer(case, 0, 1, None))["weights"]) > 1e-3


@pytest.mark.parametrize("case", ["m_per_class", "proxies"])
def test_only_rank_0_writes_checkpoints_and_logs(runs: tuple[Path, list[dict[str, Any]]], case: str) -> None:
    _, found = runs
    assert found[0][case]["files"] == ["best.pt", "last.pt"] or found[0][case]["files"] == ["last.pt"]
    assert "last.pt" in found[0][case]["files"]
    assert found[1][case]["files"] == []
    iterations = len(found[0][case]["losses"])
    assert found[0][case]["logged"] == Counter({"train": iterations, "eval": 2})
    assert found[1][case]["logged"] == Counter()


def test_embed_gathers_the_parts_in_dataset_order(runs: tuple[Path, list[dict[str, Any]]]) -> None:
    _, found = runs
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(5))
    for result in found:
        model = _model(0)
        model.load_state_dict(result["model"])
        embeddings, labels = result["embed"]
        with torch.no_grad():
            assert torch.allclose(embeddings, model(x), atol=1e-6)
        assert labels.tolist() == list(range(7))


def test_sampler_defaults_come_from_the_process_group(runs: tuple[Path, list[dict[str, Any]]]) -> None:
    _, found = runs
    labels = torch.arange(CLASSES).repeat(4)
    orders = []
    for rank, result in enumerate(found):
        num_replicas, sampler_rank, first, second = result["sampler"]
        assert (num_replicas, sampler_rank) == (WORLD, rank)
        assert first != second  # seed=None: a new order every iteration ...
        orders.append((first, second))
    for step in range(3):
        for iteration in range(2):
            parts = [orders[rank][iteration][4 * step : 4 * step + 4] for rank in range(WORLD)]
            # ... with rank 0's entropy on both processes: disjoint classes, m = 2 per class
            assert set(labels[parts[0]].tolist()).isdisjoint(labels[parts[1]].tolist())
            assert all(set(Counter(labels[p].tolist()).values()) == {2} for p in parts)


def test_cli_under_torchrun_environment_matches_one_process(
    runs: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, found = runs
    assert [result["cli"] for result in found] == [0, 0]
    assert all(result["cli_group_left"] for result in found)
    # rank 0 alone created the run folder (rank 1 would have made run-2)
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["run"]
    run = folder / "runs" / "run"
    assert {"config.json", "metrics.json", "checkpoint.pt", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert main([*CLI_ARGS, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    single = tmp_path / "run"
    mine = torch.load(run / "checkpoint.pt", weights_only=True)["model_state"]
    theirs = torch.load(single / "checkpoint.pt", weights_only=True)["model_state"]
    assert _max_difference(mine, theirs) < TOL
    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((single / "metrics.json").read_text())
    assert metrics["after"] == pytest.approx(expected["after"], abs=TOL)
    assert [e["loss"] for e in metrics["history"]] == pytest.approx([e["loss"] for e in expected["history"]], abs=TOL)
    instance = [e["instance_loss"] for e in metrics["history"]]
    assert instance == pytest.approx([e["instance_loss"] for e in expected["history"]], abs=TOL)
    train_log = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert len(train_log) == 6


def test_a_batch_that_does_not_split_into_whole_classes_per_process_is_rejected(
    runs: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, found = runs
    for result in found:
        assert result["split_error"] == (
            "TrainConfig: `sampler.batch_size` must be a multiple of `sampler.m` * number of processes (4 * 2), got 12."
        )
