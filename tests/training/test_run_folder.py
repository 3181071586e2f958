from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from dmlkit.errors import CorruptFileError
from dmlkit.training import TrainConfig
from dmlkit.training.loop import TrainResult, train
from dmlkit.training.run_folder import (
    CHECKPOINT_KEYS,
    atomic_write,
    create_run_folder,
    load_checkpoint,
    load_json,
    model_from_checkpoint,
    save_run,
    write_json,
)

TINY = ["epochs=1", "iterations_per_epoch=2", "model.hidden=[16]", "model.embedding_size=8"]


@pytest.fixture(scope="module")
def tiny_run() -> tuple[TrainConfig, TrainResult]:
    config = TrainConfig().apply_overrides(TINY)
    return config, train(config, progress=False)


@pytest.fixture
def saved(tmp_path: Path, tiny_run: tuple[TrainConfig, TrainResult]) -> dict[str, Path]:
    config, result = tiny_run
    return save_run(tmp_path, config, result)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, lambda f: f.write(b"first"))
    atomic_write(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def explode(file: object) -> None:
        file.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"format_version": 1, "a": 1}
    assert os.listdir(tmp_path) == ["out.json"]
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(target, {"a": float("nan")})
    assert os.listdir(tmp_path) == ["out.json"]


def test_create_run_folder_never_reuses_a_name(tmp_path: Path) -> None:
    first = create_run_folder(tmp_path / "runs", "demo")
    second = create_run_folder(tmp_path / "runs", "demo")
    assert (first.name, second.name) == ("demo", "demo-2")
    stamped = create_run_folder(tmp_path / "runs")
    assert len(stamped.name) == len("20240131-235959") and stamped.name[8] == "-"


def test_run_folder_contents(saved: dict[str, Path], tiny_run: tuple[TrainConfig, TrainResult]) -> None:
    config, result = tiny_run
    assert sorted(p.name for p in saved["config"].parent.iterdir()) == ["checkpoint.pt", "config.json", "metrics.json"]
    assert TrainConfig.from_dict(load_json(saved["config"])) == config
    metrics = load_json(saved["metrics"])
    keys = {"format_version", "before", "after", "raw_input", "history", "num_train", "num_test", "seconds", "versions"}
    assert set(metrics) == keys
    assert metrics["before"] == result.before and metrics["after"] == result.after
    assert metrics["raw_input"] == result.raw_input and set(result.raw_input) == set(result.after)
    assert set(metrics["after"]) == {"precision_at_1", "r_precision", "mean_average_precision_at_r"}
    assert metrics["history"] == result.history and set(metrics["versions"]) == {"dmlkit", "torch", "numpy", "python"}
    checkpoint = load_checkpoint(saved["checkpoint"])
    assert set(CHECKPOINT_KEYS) <= set(checkpoint) and checkpoint["format_version"] == 1
    assert checkpoint["config"] == config.to_dict()
    assert checkpoint["optimizer_state"]["param_groups"][0]["lr"] == config.optimizer.params["lr"]


def test_model_from_checkpoint_reproduces_the_embeddings(
    saved: dict[str, Path], tiny_run: tuple[TrainConfig, TrainResult]
) -> None:
    _, result = tiny_run
    model = model_from_checkpoint(load_checkpoint(saved["checkpoint"]))
    x = torch.rand(5, 64)
    torch.testing.assert_close(model(x), result.model.eval()(x))


def test_truncated_checkpoint_is_corrupt(saved: dict[str, Path], tmp_path: Path) -> None:
    raw = saved["checkpoint"].read_bytes()
    for size in (0, 10, len(raw) // 2, len(raw) - 5):
        bad = tmp_path / f"cut{size}.pt"
        bad.write_bytes(raw[:size])
        expected = rf"^{re.escape(str(bad))}: cannot read the checkpoint; the file is truncated or corrupt"
        with pytest.raises(CorruptFileError, match=expected):
            load_checkpoint(bad)


def test_garbage_checkpoint_is_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CorruptFileError, match=r"truncated or corrupt \(310 bytes\)"):
        load_checkpoint(bad)


def test_wrong_version_and_foreign_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"format_version": 99, "model_state": {}}, path)
    with pytest.raises(CorruptFileError, match=r"format_version 99 is not supported \(this dmlkit reads version 1\)"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CorruptFileError, match=r"no format_version; not written by dmlkit\."):
        load_checkpoint(path)
    torch.save({"format_version": 1, "model_state": {}}, path)
    expected = r"not a dmlkit checkpoint; missing optimizer_state, config, model_args\."
    with pytest.raises(CorruptFileError, match=expected):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CorruptFileError, match=r"expected a dict, got list"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_corrupt_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"format_version": 1, "after": {')
    with pytest.raises(CorruptFileError, match=r"not a valid dmlkit JSON file \(truncated or corrupt\)"):
        load_json(path)
    path.write_text("[1]")
    with pytest.raises(CorruptFileError, match=r"expected a JSON object, got list\."):
        load_json(path)
    path.write_text('{"format_version": 2}')
    with pytest.raises(CorruptFileError, match=r"format_version 2 is not supported"):
        load_json(path)
