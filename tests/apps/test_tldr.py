"""TLDR: neighbourhood preservation against a random projection, shapes, determinism, files, errors, command line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.apps import TLDR, tldr_cli
from dmlkit.errors import CorruptFileError, NotFittedError
from dmlkit.training.cli import main

FAST = {"epochs": 20, "batch_size": 200, "projector_hidden": (128,), "projector_out": 128, "lr": 1e-2}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny matrices: one thread is faster and, on a busy machine, far more predictable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _subspace_data(seed: int, n: int = 600, dim: int = 32, latent: int = 4) -> np.ndarray:
    """Points of an isotropic ``latent``-dimensional Gaussian in a random subspace of R^dim, plus small noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    basis, _ = np.linalg.qr(rng.normal(size=(dim, latent)))
    return 3 * z @ basis.T + 0.3 * rng.normal(size=(n, dim)) + 5


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _knn_recall(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each point's k nearest neighbours in ``x`` that are also among them in ``y``."""
    a, b = _knn(x, k), _knn(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))]))


# --------------------------------------------------------------------------------------------- quality


@pytest.mark.parametrize("seed", [0, 1])
def test_preserves_neighbourhoods_better_than_a_random_projection(seed: int) -> None:
    x = _subspace_data(seed)
    codes = TLDR(n_components=4, n_neighbors=10, random_state=0, **FAST).fit_transform(x)
    random = x @ np.random.default_rng(100 + seed).normal(size=(32, 4))
    tldr_recall, random_recall = _knn_recall(x, codes), _knn_recall(x, random)
    assert tldr_recall > 0.6 and tldr_recall > random_recall + 0.3, (tldr_recall, random_recall)


def test_mlp_encoder_also_beats_a_random_projection() -> None:
    x = _subspace_data(2)
    model = TLDR(n_components=4, n_neighbors=10, encoder="mlp", encoder_hidden=(64,), random_state=0, **FAST)
    codes = model.fit_transform(x)
    random = x @ np.random.default_rng(7).normal(size=(32, 4))
    assert _knn_recall(x, codes) > _knn_recall(x, random) + 0.2


def test_training_lowers_the_loss() -> None:
    model = TLDR(n_components=4, n_neighbors=10, random_state=0, **FAST).fit(_subspace_data(3))
    assert len(model.loss_history_) == FAST["epochs"]
    assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]


# --------------------------------------------------------------------------------------------- neighbours


def test_neighbors_are_the_exact_nearest_other_rows() -> None:
    x = _subspace_data(4, n=120)
    model = TLDR(n_components=2, n_neighbors=6)
    expected = _knn(x, 6)
    found = model.find_neighbors(x)
    assert found.shape == (120, 6) and found.dtype == np.int64
    np.testing.assert_array_equal(np.sort(found, axis=1), np.sort(expected, axis=1))


def test_duplicate_rows_never_pair_a_row_with_itself() -> None:
    x = np.repeat(np.arange(10, dtype=np.float64).reshape(5, 2), 3, axis=0)  # every row three times
    found = TLDR(n_components=1, n_neighbors=2).find_neighbors(x)
    assert not bool((found == np.arange(15)[:, None]).any())
    # the two copies are each row's nearest neighbours (distance 0)
    np.testing.assert_array_equal(x[found[:, 0]], x)
    np.testing.assert_array_equal(x[found[:, 1]], x)


def test_faiss_backend_finds_the_same_neighbours() -> None:
    pytest.importorskip("faiss")
    x = _subspace_data(5, n=150)
    exact = TLDR(n_components=2, n_neighbors=5).find_neighbors(x)
    faiss = TLDR(n_components=2, n_neighbors=5, index_backend="faiss").find_neighbors(x)
    np.testing.assert_array_equal(np.sort(faiss, axis=1), np.sort(exact, axis=1))


def test_fit_uses_the_given_graph_and_stores_it() -> None:
    x = _subspace_data(6, n=100)
    graph = np.roll(np.arange(100), 1)[:, None]  # each row paired with the previous one
    model = TLDR(n_components=2, epochs=2, batch_size=50, random_state=0).fit(x, neighbors=graph)
    np.testing.assert_array_equal(model.neighbors_, graph)
    np.testing.assert_allclose(model.mean_.numpy(), x.mean(axis=0), rtol=1e-5)


# --------------------------------------------------------------------------------------------- shapes, seeds


def test_transform_shapes_and_types() -> None:
    x = _subspace_data(7, n=100)
    model = TLDR(n_components=3, epochs=2, batch_size=50, random_state=0).fit(x)
    codes = model.transform(x)
    assert isinstance(codes, np.ndarray) and codes.shape == (100, 3) and codes.dtype == np.float32
    as_tensor = model.transform(torch.from_numpy(x))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (100, 3) and as_tensor.dtype == torch.float32
    np.testing.assert_array_equal(as_tensor.numpy(), codes)
    normed = model.transform(x[:10], l2_norm=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)
    assert model.transform(x[:0]).shape == (0, 3)
    # integer input is accepted (e.g. raw pixels)
    assert model.transform(np.rint(x).astype(np.int64)).shape == (100, 3)


def test_fit_transform_equals_fit_then_transform() -> None:
    x = _subspace_data(8, n=100)
    once = TLDR(n_components=3, epochs=2, batch_size=50, random_state=3).fit_transform(x)
    twice = TLDR(n_components=3, epochs=2, batch_size=50, random_state=3).fit(x).transform(x)
    np.testing.assert_array_equal(once, twice)


def test_linear_encoder_is_an_affine_map_of_the_centred_input() -> None:
    x = _subspace_data(9, n=100)
    model = TLDR(n_components=3, epochs=2, batch_size=50, random_state=0).fit(x)
    encoder = model.encoder_
    assert isinstance(encoder, torch.nn.Linear)
    centred = torch.from_numpy(x).float() - model.mean_
    expected = (centred @ encoder.weight.T + encoder.bias).numpy()
    np.testing.assert_allclose(model.transform(x), expected, rtol=1e-5, atol=1e-5)


def test_same_random_state_same_model() -> None:
    x = _subspace_data(10, n=200)
    a = TLDR(n_components=3, epochs=3, batch_size=64, random_state=11).fit_transform(x)
    b = TLDR(n_components=3, epochs=3, batch_size=64, random_state=11).fit_transform(x)
    c = TLDR(n_components=3, epochs=3, batch_size=64, random_state=12).fit_transform(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fitting_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TLDR(n_components=2, epochs=1, batch_size=50, random_state=0).fit(_subspace_data(11, n=60))
    torch.testing.assert_close(torch.rand(3), expected)


# --------------------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path) -> None:
    x = _subspace_data(12, n=100)
    model = TLDR(n_components=3, encoder="mlp", encoder_hidden=(16, 8), epochs=2, batch_size=50, random_state=4)
    model.fit(x)
    file = tmp_path / "tldr.model"
    assert model.save(file) == file
    assert sorted(os.listdir(tmp_path)) == ["tldr.model"]  # no temporary file left behind
    loaded = TLDR.load(file)
    np.testing.assert_array_equal(loaded.transform(x), model.transform(x))
    assert loaded.encoder == "mlp" and loaded.encoder_hidden == (16, 8) and loaded.random_state == 4
    assert loaded.n_features_in_ == 32 and loaded.loss_history_ == pytest.approx(model.loss_history_)


def test_save_before_fit_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match=re.escape("TLDR is not fitted yet; call fit(X) first.")):
        TLDR().save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _saved(tmp_path: Path) -> Path:
    model = TLDR(n_components=2, epochs=1, batch_size=50, random_state=0).fit(_subspace_data(13, n=60))
    return model.save(tmp_path / "m.model")


def test_load_truncated_file(tmp_path: Path) -> None:
    file = _saved(tmp_path)
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(CorruptFileError, match=re.escape(f"{file}: not a readable TLDR model file")):
        TLDR.load(file)


def test_load_flipped_byte_is_detected(tmp_path: Path) -> None:
    file = _saved(tmp_path)
    data = bytearray(file.read_bytes())
    # a byte inside the stored weights (zip members are stored uncompressed, with a CRC-32)
    offset = data.find(b"encoder.weight.npy") + 200
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))
    expected = f"{file}: not a readable TLDR model file (Bad CRC-32 for file 'encoder.weight.npy')."
    with pytest.raises(CorruptFileError, match=re.escape(expected)):
        TLDR.load(file)


def test_load_other_npz_file(tmp_path: Path) -> None:
    file = tmp_path / "other.npz"
    np.savez(file, a=np.zeros(3))
    with pytest.raises(CorruptFileError, match=re.escape(f"{file}: corrupt TLDR model file (KeyError: 'header').")):
        TLDR.load(file)


def test_load_wrong_version_and_format(tmp_path: Path) -> None:
    import json

    file = _saved(tmp_path)
    with np.load(file) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(bytes(arrays["header"]).decode())
    for key, value, expected in [
        ("version", 99, f"{file}: format version 99, but this dmlkit reads version 1."),
        ("format", "dmlkit.TopicDiscovery", f"{file}: not a TLDR model file (format 'dmlkit.TopicDiscovery')."),
    ]:
        changed = dict(header, **{key: value})
        arrays["header"] = np.frombuffer(json.dumps(changed).encode(), dtype=np.uint8)
        with open(file, "wb") as f:
            np.savez(f, **arrays)
        with pytest.raises(CorruptFileError, match=re.escape(expected)):
            TLDR.load(file)


def test_load_mismatched_weights(tmp_path: Path) -> None:
    file = _saved(tmp_path)
    with np.load(file) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["encoder.weight"] = np.zeros((5, 32), dtype=np.float32)
    with open(file, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CorruptFileError, match=re.escape(f"{file}: corrupt TLDR model file (RuntimeError:")):
        TLDR.load(file)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TLDR.load(tmp_path / "nothing.model")


# --------------------------------------------------------------------------------------------- errors


def test_error_more_components_than_features() -> None:
    with pytest.raises(
        ValueError, match=re.escape("TLDR: `n_components` must be <= the number of features of X (32), got 40.")
    ):
        TLDR(n_components=40).fit(_subspace_data(0, n=50))


def test_error_too_many_neighbours() -> None:
    with pytest.raises(
        ValueError, match=re.escape("TLDR: `n_neighbors` must be < the number of samples of X (5), got 5.")
    ):
        TLDR(n_components=2, n_neighbors=5).fit(_subspace_data(0, n=5))


def test_error_nan_input() -> None:
    x = _subspace_data(0, n=50)
    x[[3, 7], 1] = np.nan
    with pytest.raises(
        ValueError, match=re.escape("TLDR: `X` must be finite (no NaN or Inf), got 2 row(s) containing NaN or Inf.")
    ):
        TLDR(n_components=2).fit(x)


def test_error_transform_before_fit() -> None:
    with pytest.raises(NotFittedError, match=re.escape("TLDR is not fitted yet; call fit(X) first.")):
        TLDR(n_components=2).transform(np.zeros((3, 4)))


def test_error_wrong_feature_count() -> None:
    model = TLDR(n_components=2, epochs=1, batch_size=50, random_state=0).fit(_subspace_data(0, n=60))
    with pytest.raises(
        ValueError, match=re.escape("TLDR: `X` must be an array with 32 features (as in fit), got 31 features.")
    ):
        model.transform(np.zeros((4, 31)))


@pytest.mark.parametrize(
    "value,error,expected",
    [
        (np.zeros(5), ValueError, "`X` must be a 2-D array of shape (n_samples, n_features), got shape (5,)."),
        (np.array([["a", "b"]]), TypeError, "`X` must be an array of real numbers, got dtype <U1."),
        ([[1.0, 2.0]], TypeError, "`X` must be a numpy array or a torch.Tensor, got list."),
    ],
)
def test_error_bad_arrays(value: object, error: type[Exception], expected: str) -> None:
    with pytest.raises(error, match=re.escape(f"TLDR: {expected}")):
        TLDR(n_components=1).fit(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,error,expected",
    [
        ({"n_components": 0}, ValueError, "`n_components` must be an integer >= 1, got 0."),
        ({"n_neighbors": 0}, ValueError, "`n_neighbors` must be an integer >= 1, got 0."),
        ({"encoder": "linaer"}, ValueError, "`encoder` must be one of 'linear', 'mlp', got 'linaer'. Did you mean"),
        ({"batch_size": 1}, ValueError, "`batch_size` must be an integer >= 2, got 1."),
        ({"lr": 0.0}, ValueError, "`lr` must be a number > 0, got 0.0."),
        ({"lambd": -1.0}, ValueError, "`lambd` must be a number >= 0, got -1.0."),
        ({"epochs": 2.5}, TypeError, "`epochs` must be an integer, got 2.5."),
        ({"projector_hidden": (64, 0)}, ValueError, "`projector_hidden` must be a sequence of integers >= 1"),
        ({"encoder_hidden": ()}, ValueError, "`encoder_hidden` must be a sequence of integers >= 1 (at least one)"),
        ({"index_backend": "annoy"}, ValueError, "`index_backend` must be one of 'exact', 'faiss', 'faiss-ivf'"),
        ({"random_state": -1}, ValueError, "`random_state` must be an integer >= 0, got -1."),
    ],
)
def test_error_bad_arguments(kwargs: dict, error: type[Exception], expected: str) -> None:
    with pytest.raises(error, match=re.escape(f"TLDR: {expected}")):
        TLDR(**kwargs)


@pytest.mark.parametrize(
    "graph,error,expected",
    [
        (np.zeros((60, 2)), TypeError, "got dtype torch.float64."),
        (np.zeros((59, 2), dtype=np.int64), ValueError, "got shape (59, 2)."),
        (np.full((60, 1), 60), ValueError, "got an index out of range."),
    ],
)
def test_error_bad_neighbor_graph(graph: np.ndarray, error: type[Exception], expected: str) -> None:
    rule = "TLDR: `neighbors` must be an (n_samples, m) array of integer row indices in [0, 60) with m >= 1, "
    with pytest.raises(error, match=re.escape(rule + expected)):
        TLDR(n_components=2).fit(_subspace_data(0, n=60), neighbors=graph)


# --------------------------------------------------------------------------------------------- command line


def test_cli_fit_and_transform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = _subspace_data(14, n=120).astype(np.float32)
    emb, model, out = tmp_path / "x.npy", tmp_path / "x.model", tmp_path / "codes.npy"
    np.save(emb, x)
    argv = ["tldr", "fit", str(emb), str(model), "--components", "3", "--epochs", "2", "--batch-size", "60"]
    assert main([*argv, "--projector-hidden", "32", "--projector-out", "32", "--quiet"], [tldr_cli.add_command]) == 0
    assert f"Wrote {model}: TLDR 32 -> 3 dimensions, fitted on 120 vectors" in capsys.readouterr().out
    assert main(["tldr", "transform", str(model), str(emb), str(out), "--l2-norm"], [tldr_cli.add_command]) == 0
    assert f"Wrote {out}: 120 codes of dimension 3." in capsys.readouterr().out
    expected = TLDR.load(model).transform(x, l2_norm=True)
    np.testing.assert_array_equal(np.load(out), expected)
    # the same seed (default 0) gives the same model as the Python API
    direct = TLDR(n_components=3, epochs=2, batch_size=60, projector_hidden=(32,), projector_out=32, random_state=0)
    np.testing.assert_array_equal(direct.fit(x).transform(x, l2_norm=True), expected)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb = tmp_path / "x.npy"
    np.save(emb, _subspace_data(15, n=20))
    model = tmp_path / "m.model"
    status = main(["tldr", "fit", str(emb), str(model), "--components", "64"], [tldr_cli.add_command])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "dmlkit tldr fit: error: TLDR: `n_components` must be <= the number of features of X (32), got 64."
    )
    assert not model.exists()
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    status = main(["tldr", "transform", str(bad), str(emb), str(tmp_path / "o.npy")], [tldr_cli.add_command])
    assert status == 2
    assert capsys.readouterr().err.startswith(f"dmlkit tldr transform: error: {bad}: not a readable TLDR model file")
    status = main(["tldr", "transform", str(bad), str(emb), str(tmp_path / "o.txt")], [tldr_cli.add_command])
    assert status == 2
    assert "the output file must end in .npy." in capsys.readouterr().err
