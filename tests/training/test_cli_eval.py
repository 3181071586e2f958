"""``dmlkit eval``: metrics of saved embeddings, the printed table, the JSON file and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.evaluation import AccuracyCalculator, ExactKNN
from dmlkit.training.cli import main


@pytest.fixture()
def saved(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=g)
    x = torch.randn(4, 5, generator=g)[labels] * 2 + torch.randn(60, 5, generator=g)
    paths = {
        "q.npy": tmp_path / "q.npy",
        "ql.npy": tmp_path / "ql.npy",
        "q.pt": tmp_path / "q.pt",
        "ql.pt": tmp_path / "ql.pt",
        "r.npy": tmp_path / "r.npy",
        "rl.npy": tmp_path / "rl.npy",
    }
    np.save(paths["q.npy"], x[:40].numpy())
    np.save(paths["ql.npy"], labels[:40].numpy())
    torch.save(x[:40], paths["q.pt"])
    torch.save(labels[:40, None], paths["ql.pt"])  # (N, 1), as pytorch-metric-learning's testers save labels
    np.save(paths["r.npy"], x[40:].numpy())
    np.save(paths["rl.npy"], labels[40:].numpy())
    return paths


def test_self_retrieval_table_and_json(saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "metrics.json"
    code = main(["eval", str(saved["q.pt"]), str(saved["ql.pt"]), "--at-k", "1", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    want = AccuracyCalculator(at_k=(1, 3)).get_accuracy(
        torch.from_numpy(np.load(saved["q.npy"])), torch.load(saved["ql.pt"])[:, 0]
    )
    data = json.loads(out.read_text())
    assert data["format_version"] == 1 and data["num_queries"] == 40 and data["num_references"] == 40
    assert data["metrics"] == pytest.approx(want)
    lines = printed.splitlines()
    assert lines[0] == "40 queries, 40 references, embedding size 5:"
    assert lines[1].split() == ["metric", "value"]
    rows = dict(line.split() for line in lines[2 : 2 + len(want)])
    assert rows == {name: f"{value:.6f}" for name, value in want.items()}
    assert lines[-1] == f"Wrote {out}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_separate_reference_with_options(saved: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args = [str(saved["q.npy"]), str(saved["ql.npy"]), "--reference", str(saved["r.npy"])]
    args += ["--reference-labels", str(saved["rl.npy"]), "--k", "max_bin_count", "--include", "precision_at_1"]
    args += ["r_precision", "--distance", "cosine", "--avg-of-avgs"]
    assert main(["eval", *args]) == 0
    rows = dict(line.split() for line in capsys.readouterr().out.splitlines()[2:4])
    want = AccuracyCalculator(
        include=("precision_at_1", "r_precision"), k="max_bin_count", avg_of_avgs=True, knn_func=ExactKNN("cosine")
    )
    values = want.get_accuracy(*(torch.from_numpy(np.load(saved[n])) for n in ("q.npy", "ql.npy", "r.npy", "rl.npy")))
    assert rows == {name: f"{value:.6f}" for name, value in values.items()}


def test_faiss_flat_gives_the_exact_values(saved: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("faiss")
    base = ["eval", str(saved["q.npy"]), str(saved["ql.npy"]), "--exclude", "NMI", "AMI"]
    assert main(base) == 0
    exact = capsys.readouterr().out
    assert main([*base, "--knn", "faiss-flat"]) == 0
    assert capsys.readouterr().out == exact


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["missing.npy", "ql.npy"], "missing.npy: no such file."),
        (None, ["q.npy", "ql.txt"], "ql.txt: an array file must end in .npy or .pt."),
        ("truncated", ["bad.npy", "ql.npy"], "bad.npy: not a readable .npy array (truncated or corrupt)"),
        ("garbage_pt", ["bad.pt", "ql.npy"], "bad.pt: not a readable .pt tensor file (truncated or corrupt)"),
        ("dict_pt", ["dict.pt", "ql.npy"], "dict.pt: expected a single tensor, got dict."),
        (None, ["q.npy", "q.npy"], "q.npy: labels must be 1-D (or of shape (N, 1)), got shape (40, 5)."),
        (None, ["q.npy", "rl.npy"], "AccuracyCalculator: `query_labels` must be of the same length as `query` (40)"),
        (
            None,
            ["q.npy", "ql.npy", "--reference", "r.npy"],
            "--reference and --reference-labels must be given together.",
        ),
        (None, ["q.npy", "ql.npy", "--k", "many"], "--k must be an integer, max_bin_count or all, got 'many'."),
        (None, ["q.npy", "ql.npy", "--include", "MAP"], "AccuracyCalculator: `include` must be metric names among"),
        (
            None,
            ["q.npy", "ql.npy", "--knn", "faiss-flat", "--distance", "cosine"],
            "--distance cosine needs --knn exact",
        ),
    ],
)
def test_errors_exit_with_2(
    make: str | None,
    args: list[str],
    message: str,
    saved: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    if make == "truncated":
        (tmp_path / "bad.npy").write_bytes(saved["q.npy"].read_bytes()[:100])
    elif make == "garbage_pt":
        (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    elif make == "dict_pt":
        torch.save({"embeddings": torch.zeros(2, 2)}, tmp_path / "dict.pt")
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmlkit eval: error: ")
    assert message in err


def test_json_nan_becomes_null(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "x.npy", np.eye(3, dtype=np.float32))
    np.save(tmp_path / "y.npy", np.arange(3))
    out = tmp_path / "m.json"
    args = ["eval", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--include", "precision_at_1", "--json", str(out)]
    with pytest.warns(UserWarning, match="none of the query labels"):
        assert main(args) == 0
    assert json.loads(out.read_text())["metrics"] == {"precision_at_1": None}
    assert "precision_at_1  nan" in capsys.readouterr().out
