"""examples/think_local.py end to end on a small synthetic corpus of wide classes, its helpers and its errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dmlkit.data import Vocabulary
from dmlkit.evaluation.knn_classifier import KNNClassifier
from dmlkit.training import SetEncoder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "think_local.py"


@pytest.fixture(scope="module")
def tl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("think_local_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def synthetic(tl: ModuleType, seed: int, per_cluster: int, classes: int = 4, clusters: int = 3) -> object:
    """Wide classes: each is ``clusters`` sub-topics with their own words; an item is 3 words of its sub-topic
    and one word shared by every class."""
    rng = np.random.default_rng(seed)
    items, labels = [], []
    for c in range(classes):
        for s in range(clusters):
            own = [f"c{c}s{s}w{j}" for j in range(6)]
            for _ in range(per_cluster):
                words = [*rng.choice(own, size=3, replace=False).tolist(), f"common{rng.integers(30)}"]
                items.append(" ".join(words))
                labels.append(c)
    return tl.Corpus(items, labels)


SMALL = {
    "embedding_dim": 16,
    "output_dim": 8,
    "key_dim": 8,
    "epochs": 6,
    "batch_size": 32,
    "m": 8,
    "lr": 1e-2,
    "ks": (1, 3, 5),
    "cs": (10.0,),
    "validation_fraction": 0.2,
}


def test_end_to_end_on_a_synthetic_corpus(tl: ModuleType, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train, test = synthetic(tl, 0, per_cluster=30), synthetic(tl, 1, per_cluster=10)
    settings = dataclasses.replace(tl.Settings(), **SMALL)
    results = tl.run_experiment(train, test, 4, seeds=(0,), settings=settings, progress=False)
    assert [r["condition"] for r in results] == list(tl.CONDITIONS)
    clean = results[0]
    chance = 0.25
    for method in ("triplet + kNN", "softmax", "TF-IDF + LR"):
        acc, f1 = clean[method]
        assert acc > chance + 0.4 and f1 > chance + 0.4, (method, clean[method])
    assert clean["triplet + kNN k"] in SMALL["ks"] and clean["TF-IDF + LR C"] == 10.0
    assert set(clean["split"]) == set(tl.METHODS) and 0 <= clean["repeated_fraction"] <= 1
    longtail = results[-1]
    assert longtail["train_size"] < clean["train_size"] / 2

    table = tl.markdown_table(results)
    assert table.splitlines()[0].startswith("| method | clean acc | clean macro-F1 | noise20 acc")
    assert len(table.splitlines()) == 2 + len(tl.METHODS)
    assert "**" in table

    page = tmp_path / "page.md"
    page.write_text("# Title\n\nintro\n\n<!-- results:start -->\nOLD RESULTS\n<!-- results:end -->\n\nanalysis\n")
    tl.write_markdown(page, tl.results_block(results, "python x.py", 12.0, settings))
    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- results:start -->") and text.endswith("analysis\n")
    assert "OLD RESULTS" not in text and table in text and tl.split_table(results) in text
    picture = tl.plot(results, tmp_path / "plot.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_repeated_items_compare_word_multisets(tl: ModuleType) -> None:
    train = tl.Corpus(["a b", "c", "d d e"], [0, 1, 2])
    test = tl.Corpus(["B, a!", "c d", "c", "d e", "e d d"], [0, 0, 0, 0, 0])
    assert tl.repeated_items(train, test).tolist() == [True, False, True, False, True]


def test_flip_labels_changes_the_asked_fraction_to_other_classes(tl: ModuleType) -> None:
    labels = np.repeat(np.arange(5), 200)
    flipped = np.array(tl.flip_labels(labels, 0.4, 5, np.random.default_rng(0)))
    changed = flipped != labels
    assert changed.sum() == 400
    assert set(np.unique(flipped[changed])) == set(range(5))
    # "to another class, uniformly": each of the 4 other classes gets about a quarter of a class's flips
    offsets = (flipped[changed] - labels[changed]) % 5
    assert set(np.unique(offsets)) == {1, 2, 3, 4} and np.bincount(offsets)[1:].min() > 60


def test_long_tail_sizes_decay_geometrically_with_ratio_20(tl: ModuleType) -> None:
    labels = np.repeat(np.arange(20), 300)
    rows = tl.long_tail_rows(labels, 20.0, np.random.default_rng(0))
    sizes = np.sort(np.bincount(labels[rows]))[::-1]
    assert sizes[0] == 300 and sizes[-1] == 15 and len(np.unique(rows)) == len(rows)
    assert np.allclose(sizes[:-1] / sizes[1:], 20 ** (1 / 19), rtol=0.1)


def test_validation_split_is_stratified_and_disjoint(tl: ModuleType) -> None:
    labels = np.repeat(np.arange(3), [100, 20, 2])
    fit, val = tl.validation_split(labels, 0.15, np.random.default_rng(0))
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(labels)
    assert np.bincount(labels[val], minlength=3).tolist() == [15, 3, 0]


def test_labels_and_items_of_different_lengths(tl: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"Corpus: `labels` must be of the same length as `items` \(3\), got length 2"):
        tl.Corpus(["a", "b", "c"], [0, 1])


def test_unknown_condition(tl: ModuleType) -> None:
    corpus = tl.Corpus(["a b", "c d"], [0, 1])
    with pytest.raises(ValueError, match=r"`condition` must be one of clean, noise20, noise40, longtail, got 'noisy'"):
        tl.make_condition(corpus, "noisy", 2, tl.Settings(), 0)
    with pytest.raises(ValueError, match=r"unknown condition 'noise'"):
        tl.run_experiment(corpus, corpus, 2, conditions=("noise",), progress=False)


def test_k_larger_than_the_training_set(tl: ModuleType) -> None:
    train, val = torch.randn(6, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"every k must be <= the number of training items \(6\), got \[10\]\. Lower"):
        tl.choose_k(train, [0, 1, 0, 1, 0, 1], val, [0, 1, 0], (1, 3, 10))
    clf = KNNClassifier(n_neighbors=10).fit(train, [0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"`n_neighbors` must be <= the number of training samples \(n_samples = 6\)"):
        clf.predict(val)


def test_a_loaded_model_without_its_vocabulary(tmp_path: Path) -> None:
    vocabulary = Vocabulary.build(["red cars", "blue bikes"])
    file = SetEncoder(len(vocabulary), 8).save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"saved without its vocabulary\. Pass the Vocabulary .* SetEncoder\.save"):
        SetEncoder.load(file)


def test_a_missing_data_folder(tl: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match=r"20 Newsgroups archive not found .* set \$DMLKIT_DATA"):
        tl.load_subjects(str(tmp_path), "train")
    assert tl.main(["--data", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("think_local: error: 20 Newsgroups archive not found") and "DMLKIT_DATA" in err
