"""``dmlkit index build`` and ``dmlkit index query``: files, printed neighbours, JSON output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.index import EmbeddingIndex
from dmlkit.training.cli import main


@pytest.fixture()
def arrays(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    paths = {name: tmp_path / name for name in ("emb.npy", "ids.npy", "q.npy", "bad_q.npy", "dup_ids.npy")}
    emb = torch.randn(120, 6, generator=g)
    np.save(paths["emb.npy"], emb.numpy())
    np.save(paths["ids.npy"], np.arange(120, dtype=np.int64)[::-1] * 10)
    np.save(paths["q.npy"], torch.randn(4, 6, generator=g).numpy())
    np.save(paths["bad_q.npy"], torch.randn(4, 5, generator=g).numpy())
    np.save(paths["dup_ids.npy"], np.zeros(120, dtype=np.int64))
    return paths


@pytest.mark.parametrize("metric", ["cosine", "l2", "inner_product"])
def test_build_then_query(
    arrays: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], metric: str
) -> None:
    out = tmp_path / "emb.index"
    assert (
        main(["index", "build", str(arrays["emb.npy"]), str(out), "--ids", str(arrays["ids.npy"]), "--metric", metric])
        == 0
    )
    assert f"Wrote {out}: 120 embeddings of dimension 6, {metric}, exact." in capsys.readouterr().out
    index = EmbeddingIndex.load(out, metric=metric, dim=6)
    assert index.ids.tolist() == sorted(np.load(arrays["ids.npy"]).tolist())
    result = tmp_path / "result.json"
    assert main(["index", "query", str(out), str(arrays["q.npy"]), "--k", "3", "--json", str(result)]) == 0
    printed = capsys.readouterr().out.splitlines()
    want = index.search(torch.from_numpy(np.load(arrays["q.npy"])), 3)
    kind = "distance" if metric == "l2" else "score"
    assert printed[0] == f"4 queries, k=3, {metric} ({kind}):"
    ids, values = want.ids.tolist(), want.distances.tolist()
    assert printed[1] == "query 0: " + ", ".join(f"{i} ({v:.6f})" for i, v in zip(ids[0], values[0], strict=True))
    body = json.loads(result.read_text())
    assert body["metric"] == metric and body["k"] == 3 and body["ids"] == ids
    assert np.allclose(body[kind + "s"], values, rtol=0, atol=1e-6)


def test_missing_neighbours_are_null_in_json(arrays: dict[str, Path], tmp_path: Path) -> None:
    few = tmp_path / "few.npy"
    np.save(few, np.eye(2, 6, dtype=np.float32))
    main(["index", "build", str(few), str(tmp_path / "few.index"), "--metric", "l2"])
    assert (
        main(
            [
                "index",
                "query",
                str(tmp_path / "few.index"),
                str(arrays["q.npy"]),
                "--k",
                "3",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    body = json.loads((tmp_path / "r.json").read_text())
    assert [row[2] for row in body["ids"]] == [-1] * 4 and [row[2] for row in body["distances"]] == [None] * 4


def test_faiss_backend(arrays: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    exact, flat = tmp_path / "exact.index", tmp_path / "flat.index"
    assert main(["index", "build", str(arrays["emb.npy"]), str(exact), "--metric", "l2"]) == 0
    assert main(["index", "build", str(arrays["emb.npy"]), str(flat), "--metric", "l2", "--backend", "faiss-flat"]) == 0
    assert EmbeddingIndex.load(flat).backend.value == "faiss-flat"
    for file in (exact, flat):
        assert main(["index", "query", str(file), str(arrays["q.npy"]), "--json", str(file.with_suffix(".json"))]) == 0
    a, b = (json.loads(f.with_suffix(".json").read_text()) for f in (exact, flat))
    assert a["ids"] == b["ids"]
    assert (
        main(
            [
                "index",
                "build",
                str(arrays["emb.npy"]),
                str(tmp_path / "ivf.index"),
                "--backend",
                "faiss-ivf",
                "--nlist",
                "8",
            ]
        )
        == 0
    )


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dmlkit {command}: error: ")
    return err


def test_errors_exit_2_with_a_clear_message(
    arrays: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "emb.index"
    main(["index", "build", str(arrays["emb.npy"]), str(out)])
    capsys.readouterr()
    err = _error(capsys, ["index", "query", str(out), str(arrays["bad_q.npy"])], "index query")
    assert "`queries` must be of embedding size 6 (the index's dimension), got embedding size 5." in err
    err = _error(capsys, ["index", "query", str(tmp_path / "nope.index"), str(arrays["q.npy"])], "index query")
    assert "nope.index" in err
    data = out.read_bytes()
    out.write_bytes(data[:-5])
    err = _error(capsys, ["index", "query", str(out), str(arrays["q.npy"])], "index query")
    assert f"{out}: truncated (" in err
    err = _error(
        capsys, ["index", "build", str(arrays["emb.npy"]), str(out), "--ids", str(arrays["dup_ids.npy"])], "index build"
    )
    assert "`ids` must be distinct, got repeated ids [0]." in err
    assert out.read_bytes() == data[:-5]  # a failed build writes nothing
    err = _error(capsys, ["index", "build", str(tmp_path / "missing.npy"), str(out)], "index build")
    assert "missing.npy: no such file." in err
    out.write_bytes(data)
    err = _error(capsys, ["index", "query", str(out), str(arrays["q.npy"]), "--k", "0"], "index query")
    assert "EmbeddingIndex: `k` must be an integer >= 1, got 0." in err


def test_ivf_with_too_few_rows(arrays: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss")
    argv = ["index", "build", str(arrays["q.npy"]), str(tmp_path / "ivf.index"), "--backend", "faiss-ivf"]
    err = _error(capsys, argv, "index build")
    assert "`embeddings` must be at least nlist = 100 rows to train the IVF index" in err
    assert not (tmp_path / "ivf.index").exists()


def test_argument_errors_exit_2(arrays: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["index"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(arrays["emb.npy"]), str(tmp_path / "x.index"), "--metric", "euclidean"])
    assert exit_info.value.code == 2
