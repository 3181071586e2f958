from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dmlkit.errors import CorruptFileError, MissingDependencyError
from dmlkit.training.logs import TENSORBOARD_FOLDER, RunLogger


def _csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return list(csv.reader(file))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant} in {path}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text(encoding="utf-8").splitlines()]


def _csv_value(cell: str) -> Any:
    """The inverse of the documented CSV cell format, for the round-trip checks."""
    if cell == "":
        return None
    if cell in ("True", "False"):
        return cell == "True"
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


RECORDS = [
    {"step": 0, "epoch": 0, "loss": 1.25, "split": "train", "ok": True, "note": None},
    {"step": 1, "epoch": 0, "loss": 0.1 + 0.2, "split": 'a,b "quoted"\nline', "ok": False, "note": "é"},
    {"step": 2, "epoch": 1, "loss": -3e-12, "split": "train", "ok": True, "note": "x"},
]


def test_jsonl_and_csv_round_trip(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        for record in RECORDS:
            logger.log("train", record)
        assert logger.records("train") == RECORDS
    assert _jsonl(tmp_path / "train.jsonl") == RECORDS
    rows = _csv(tmp_path / "train.csv")
    assert rows[0] == ["step", "epoch", "loss", "split", "ok", "note"]
    parsed = [{key: _csv_value(cell) for key, cell in zip(rows[0], row, strict=True)} for row in rows[1:]]
    # The split strings are text in the CSV too; the generic parser above would not turn them into numbers.
    assert parsed == RECORDS
    assert rows[2][2] == "0.30000000000000004"  # floats keep every digit
    assert _leftovers(tmp_path) == []


def test_a_new_key_widens_the_csv_header_and_pads_older_rows(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 0, "loss": 0.5})
        logger.log("train", {"step": 1, "loss": 0.25, "lr": 0.1})
        logger.log("train", {"step": 2})
        logger.log("train", {"lr": 0.2, "metric_loss": 1.5, "step": 3})
        assert logger.records("train") == [
            {"step": 0, "loss": 0.5},
            {"step": 1, "loss": 0.25, "lr": 0.1},
            {"step": 2},
            {"lr": 0.2, "metric_loss": 1.5, "step": 3},
        ]
    assert _csv(tmp_path / "train.csv") == [
        ["step", "loss", "lr", "metric_loss"],
        ["0", "0.5", "", ""],
        ["1", "0.25", "0.1", ""],
        ["2", "", "", ""],
        ["3", "", "0.2", "1.5"],
    ]
    assert _leftovers(tmp_path) == []


def test_non_finite_values_are_null_in_jsonl_and_named_in_csv(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 0, "a": math.nan, "b": math.inf, "c": -math.inf, "d": None, "e": 1.0})
        assert logger.records("train") == [{"step": 0, "a": None, "b": None, "c": None, "d": None, "e": 1.0}]
    # Strict JSON: _jsonl fails on NaN / Infinity constants.
    assert _jsonl(tmp_path / "train.jsonl") == [{"step": 0, "a": None, "b": None, "c": None, "d": None, "e": 1.0}]
    header, row = _csv(tmp_path / "train.csv")
    assert row == ["0", "nan", "inf", "-inf", "", "1.0"]
    assert math.isnan(float(row[1])) and float(row[2]) == math.inf and float(row[3]) == -math.inf


def test_numpy_and_tensor_scalars_are_stored_as_plain_values(tmp_path: Path) -> None:
    record = {
        "a": np.float32(0.5),
        "b": np.int64(7),
        "c": torch.tensor(2.5),
        "d": torch.tensor([3]),
        "e": np.bool_(True),
        "f": np.float64(0.1),
    }
    with RunLogger(tmp_path) as logger:
        logger.log("s", record)
        back = logger.records("s")
    assert back == [{"a": 0.5, "b": 7, "c": 2.5, "d": 3, "e": True, "f": 0.1}]
    assert [type(v) for v in back[0].values()] == [float, int, float, int, bool, float]
    assert _csv(tmp_path / "s.csv")[1] == ["0.5", "7", "2.5", "3", "True", "0.1"]


def test_an_existing_folder_is_continued(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 0, "loss": 1.0})
        logger.log("eval", {"epoch": 0, "split": "test", "precision_at_1": 0.5})
    with RunLogger(tmp_path) as logger:
        assert logger.records("train") == [{"step": 0, "loss": 1.0}]
        logger.log("train", {"step": 1, "loss": 0.5})
        logger.log("train", {"step": 2, "loss": 0.25, "lr": 0.1})
    with RunLogger(tmp_path) as logger:
        assert logger.records("train") == [
            {"step": 0, "loss": 1.0},
            {"step": 1, "loss": 0.5},
            {"step": 2, "loss": 0.25, "lr": 0.1},
        ]
        assert logger.records("eval") == [{"epoch": 0, "split": "test", "precision_at_1": 0.5}]
    assert _csv(tmp_path / "train.csv") == [
        ["step", "loss", "lr"],
        ["0", "1.0", ""],
        ["1", "0.5", ""],
        ["2", "0.25", "0.1"],
    ]


def test_a_last_line_left_without_newline_is_finished_before_appending(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"step": 0, "loss": 1.0}', encoding="utf-8")
    (tmp_path / "train.csv").write_text("step,loss\n0,1.0", encoding="utf-8")
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 1, "loss": 0.5})
        assert logger.records("train") == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    assert _csv(tmp_path / "train.csv") == [["step", "loss"], ["0", "1.0"], ["1", "0.5"]]


def test_a_missing_csv_is_rebuilt_from_the_jsonl(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 0, "loss": math.inf})
        logger.log("train", {"step": 1, "loss": 0.5, "lr": 0.1})
    (tmp_path / "train.csv").unlink()
    with RunLogger(tmp_path) as logger:
        logger.log("train", {"step": 2, "loss": 0.25})
    # The JSON lines do not keep "inf", so the rebuilt cell is empty.
    assert _csv(tmp_path / "train.csv") == [
        ["step", "loss", "lr"],
        ["0", "", ""],
        ["1", "0.5", "0.1"],
        ["2", "0.25", ""],
    ]


def test_truncate_keeps_matching_records_in_both_files(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        for step in range(6):
            record: dict[str, Any] = {"step": step, "epoch": step // 2, "loss": 1.0 / (step + 1)}
            if step == 1:
                record["loss"] = math.nan
            if step == 4:
                record["lr"] = 0.5
            logger.log("train", record)
        dropped = logger.truncate("train", lambda r: r["epoch"] <= 1)
        assert dropped == 2
        assert logger.records("train") == [
            {"step": 0, "epoch": 0, "loss": 1.0},
            {"step": 1, "epoch": 0, "loss": None},
            {"step": 2, "epoch": 1, "loss": 1.0 / 3},
            {"step": 3, "epoch": 1, "loss": 0.25},
        ]
        # Logging goes on after the kept records (as a resumed run does).
        logger.log("train", {"step": 4, "epoch": 2, "loss": 0.125})
        assert [r["step"] for r in logger.records("train")] == [0, 1, 2, 3, 4]
    assert _csv(tmp_path / "train.csv") == [
        ["step", "epoch", "loss", "lr"],
        ["0", "0", "1.0", ""],
        ["1", "0", "nan", ""],  # the CSV's own cells are kept, "nan" included
        ["2", "1", repr(1.0 / 3), ""],
        ["3", "1", "0.25", ""],
        ["4", "2", "0.125", ""],
    ]
    assert len(_jsonl(tmp_path / "train.jsonl")) == 5
    assert _leftovers(tmp_path) == []


def test_truncate_rebuilds_a_csv_that_disagrees_with_the_jsonl(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        for step in range(3):
            logger.log("train", {"step": step, "loss": float(step)})
    rows = _csv(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text("\n".join(",".join(r) for r in rows[:-1]) + "\n", encoding="utf-8")
    with RunLogger(tmp_path) as logger:
        assert logger.truncate("train", lambda r: r["step"] != 1) == 1
    assert _csv(tmp_path / "train.csv") == [["step", "loss"], ["0", "0.0"], ["2", "2.0"]]


def test_truncate_of_an_unknown_stream_does_nothing(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        assert logger.truncate("never", lambda r: True) == 0
        assert logger.records("never") == []
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "loss": \n[1, 2]\n', encoding="utf-8")
    logger = RunLogger(tmp_path)
    with pytest.raises(CorruptFileError, match=rf"^{path}: line 2 is not valid JSON \(Expecting value\)"):
        logger.records("train")
    path.write_text('{"step": 0}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(CorruptFileError, match=rf"^{path}: line 3 is not a JSON object \(got list\): '\[1, 2\]\\n'$"):
        logger.records("train")
    with pytest.raises(CorruptFileError, match="line 3"):
        logger.truncate("train", lambda r: True)
    logger.close()


def test_bad_arguments_raise_exact_messages(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"^RunLogger: `stream` must be a name of letters, digits, '_', '-' and '.' not starting with "
        r"'.' or '-', got '../x'.$",
    ):
        logger.log("../x", {"a": 1})
    with pytest.raises(TypeError, match=r"^RunLogger: `stream` must be a str, got 3.$"):
        logger.log(3, {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^RunLogger: `record` must be a non-empty mapping, got \{\}.$"):
        logger.log("train", {})
    with pytest.raises(TypeError, match=r"^RunLogger: `record\['x'\]` must be an int, float, str, bool or None, "):
        logger.log("train", {"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"^RunLogger: `record` must be keyed by str, got 1.$"):
        logger.log("train", {1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"^RunLogger: `tensorboard` must be a bool, got 'yes'.$"):
        RunLogger(tmp_path, tensorboard="yes")  # type: ignore[arg-type]
    # Nothing was written by the rejected calls.
    assert list(tmp_path.iterdir()) == []
    logger.close()
    logger.close()
    with pytest.raises(ValueError, match=r"^RunLogger: the logger of '.*' is closed.$"):
        logger.log("train", {"a": 1})


def test_the_folder_is_created(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "one"
    with RunLogger(folder) as logger:
        logger.log("train", {"step": 0})
    assert (folder / "train.jsonl").exists() and (folder / "train.csv").exists()


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "dmlkit\[tensorboard\]"$'):
        RunLogger(tmp_path, tensorboard=True)


def test_tensorboard_gets_every_numeric_field(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path, tensorboard=True) as logger:
        logger.log("train", {"step": 10, "epoch": 0, "loss": 0.5, "name": "x", "flag": True, "gap": None})
        logger.log("train", {"step": 20, "epoch": 0, "loss": 0.25, "lr": 0.1})
        logger.log("eval", {"epoch": 0, "split": "test", "precision_at_1": 0.75})
        logger.log("eval", {"epoch": 1, "split": "test", "precision_at_1": 0.875})
    events = list((tmp_path / TENSORBOARD_FOLDER).glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(tmp_path / TENSORBOARD_FOLDER))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == [
        "eval/epoch",
        "eval/precision_at_1",
        "train/epoch",
        "train/loss",
        "train/lr",
    ]
    loss = accumulator.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(10, 0.5), (20, 0.25)]
    assert [(e.step, e.value) for e in accumulator.Scalars("train/lr")] == [(20, pytest.approx(0.1))]
    # Without a "step", the position of the record in its stream is the step.
    assert [(e.step, e.value) for e in accumulator.Scalars("eval/precision_at_1")] == [(0, 0.75), (1, 0.875)]


def test_tensorboard_positions_count_the_records_of_a_continued_folder(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path) as logger:
        logger.log("eval", {"epoch": 0, "precision_at_1": 0.5})
        logger.log("eval", {"epoch": 1, "precision_at_1": 0.625})
    with RunLogger(tmp_path, tensorboard=True) as logger:
        logger.log("eval", {"epoch": 2, "precision_at_1": 0.75})
    accumulator = EventAccumulator(str(tmp_path / TENSORBOARD_FOLDER))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("eval/precision_at_1")] == [(2, 0.75)]
