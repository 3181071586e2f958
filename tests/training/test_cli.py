from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmlkit.training import TrainConfig
from dmlkit.training.cli import main

TINY = ["--set", "epochs=1", "--set", "iterations_per_epoch=2", "--set", "model.hidden=[16]"]


def test_train_end_to_end_writes_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", *TINY, "--set", "seed=3", "--out", str(tmp_path / "runs"), "--name", "smoke", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    folder = tmp_path / "runs" / "smoke"
    written = {p.name for p in folder.iterdir()}
    assert {"checkpoint.pt", "config.json", "metrics.json", "last.pt", "train.jsonl", "train.csv"} <= written
    assert not any(name.startswith(".") for name in written)  # no temporary files left behind
    if importlib.util.find_spec("matplotlib") is not None:
        assert "report.html" in written
    assert f"Run folder: {folder}" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    assert lines[header].split() == ["metric", "before", "after", "change"]
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == ["Precision@1", "R-Precision", "MAP@R"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["format_version"] == 1 and len(metrics["history"]) == 1
    map_r = metrics["after"]["mean_average_precision_at_r"]
    assert lines[header + 3].split()[2] == f"{map_r:.4f}"
    raw_map_r = metrics["raw_input"]["mean_average_precision_at_r"]
    assert lines[header + 4].startswith("For reference, the raw input features (no model): Precision@1 ")
    assert lines[header + 4].endswith(f"MAP@R {raw_map_r:.4f}")
    config = json.loads((folder / "config.json").read_text())
    assert config["seed"] == 3 and config["out_dir"] == str(tmp_path / "runs") and config["run_name"] == "smoke"


def test_train_from_a_json_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = TrainConfig().apply_overrides(["epochs=1", "iterations_per_epoch=1", "miner=null", f"out_dir={tmp_path}"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(source.to_dict()))
    assert main(["train", str(path), "--name", "from-file", "--quiet"]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "from-file" / "config.json").read_text())
    assert TrainConfig.from_dict(written) == source.apply_overrides(["run_name=from-file"])


def test_bad_override_key_exits_with_2_and_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "loss.margn=0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmlkit train: error: Unknown config key 'loss.margn'. Did you mean 'loss.margin'? Known: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "epochs=many"], "dmlkit train: error: TrainConfig: `epochs` must be an integer, got 'many'."),
        (["--set", "epochs"], "`override` must be of the form key=value"),
        (["--set", "sampler.batch_size=70"], "`sampler.batch_size` must be a multiple of `sampler.m` (16), got 70."),
        (["missing.json"], "No such file or directory"),
        (["config.txt"], "config.txt: a configuration file must end in .json, .yaml or .yml."),
    ],
)
def test_invalid_arguments_exit_with_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.txt").write_text("{}")
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_invalid_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"epochs": 1,')
    assert main(["train", str(path)]) == 2
    assert f"dmlkit train: error: {path}: invalid JSON: " in capsys.readouterr().err
    path.write_text('{"loss": {"name": "triplet_margin", "margn": 0.2}}')
    assert main(["train", str(path)]) == 2
    assert "Unknown config key 'loss.margn'. Did you mean 'loss.margin'?" in capsys.readouterr().err


def test_yaml_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    path = tmp_path / "config.yaml"
    path.write_text(f"epochs: 1\niterations_per_epoch: 1\nout_dir: {tmp_path}\nrun_name: y\nmodel:\n  hidden: [8]\n")
    assert main(["train", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "y" / "config.json").read_text())["model"]["hidden"] == [8]


def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    path = tmp_path / "config.yml"
    path.write_text("epochs: 1\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Reading YAML configurations needs the optional package `pyyaml`" in err
    assert 'pip install "dmlkit[yaml]"' in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dmlkit", "train", "--help"], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: dmlkit train [-h] [--set KEY=VALUE]")
    assert "--quiet" in out.stdout and "CONFIG" in out.stdout


def test_resume_continues_an_interrupted_run_exactly(tmp_path: Path) -> None:
    common = ["--set", "iterations_per_epoch=3", "--set", "model.hidden=[16]", "--set", "output.report=false"]
    common.append("--quiet")
    assert main(["train", *common, "--set", "epochs=3", "--out", str(tmp_path), "--name", "full"]) == 0
    assert main(["train", *common, "--set", "epochs=1", "--out", str(tmp_path), "--name", "part"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", "epochs=3", "--quiet"]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    part = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert part["after"] == full["after"]
    assert [h["loss"] for h in part["history"]] == [h["loss"] for h in full["history"]]
    lines = (tmp_path / "part" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 10))


def test_resume_without_a_checkpoint_and_with_a_config_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["train", "some.json", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "give no CONFIG" in capsys.readouterr().err


def test_embed_writes_embeddings_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    assert main(["train", *TINY, "--set", "output.report=false", "--out", str(tmp_path), "--name", "r", "--quiet"]) == 0
    out = tmp_path / "emb"
    assert main(["embed", str(tmp_path / "r" / "checkpoint.pt"), str(out), "--classes", "5", "6"]) == 0
    embeddings, labels = np.load(f"{out}.npy"), np.load(f"{out}.labels.npy")
    assert embeddings.shape == (len(labels), 32) and set(labels.tolist()) == {5, 6}
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-5)  # the demo model normalises
    assert main(["embed", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert "dmlkit embed: error:" in capsys.readouterr().err
