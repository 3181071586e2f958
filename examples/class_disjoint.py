"""Class-disjoint retrieval on digits, MNIST and Fashion-MNIST: trained model vs. two baselines.

Each configuration in this folder trains on some classes and is tested on unseen ones. Next to the trained
model this script measures, on the same test images and with the same metrics (Precision@1, R-Precision and
MAP@R; Musgrave, Belongie and Lim, 2020, arXiv:2003.08505):

* the untrained network (same architecture and seed, before any step), and
* PCA of the raw pixels to the embedding size, fitted on the training classes' images.

With several seeds (``--seeds``), the trained and untrained rows are means over the seeds (PCA does not depend
on the seed) and a last column counts the seeds whose trained model beats both baselines on every metric.

``--folds`` measures the recipes without the unseen classes: each pair of training classes is held out in turn,
the model is trained on the others and tested on the pair (the class-disjoint folds on which the examples'
settings were first chosen; the batch shrinks to ``m`` times the number of classes left when it must).

Usage (from the repository root; MNIST and Fashion-MNIST are read from ``$DMLKIT_DATA`` or ``../shared/data``)::

    python examples/class_disjoint.py                                  # all three, seed 0
    python examples/class_disjoint.py --seeds 0 1 2 3 4                # all three, five seeds each
    python examples/class_disjoint.py examples/mnist.yaml --seeds 0 1  # one
    python examples/class_disjoint.py --folds                          # the ten folds of classes 0-4

It prints a Markdown table and writes ``runs/class_disjoint.json`` (``runs/class_disjoint_folds.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.decomposition import PCA

from dmlkit.training import TrainConfig
from dmlkit.training.cli import load_config_file
from dmlkit.training.loop import METRICS, RunData, _retrieval, train
from dmlkit.training.run_folder import create_run_folder

HERE = Path(__file__).resolve().parent
CONFIGS = [HERE / "digits.yaml", HERE / "mnist.yaml", HERE / "fashion_mnist.yaml"]
LABELS = {"precision_at_1": "P@1", "r_precision": "R-Precision", "mean_average_precision_at_r": "MAP@R"}


def pca_baseline(config: TrainConfig, parts: RunData) -> dict[str, float]:
    """Retrieval of PCA-projected raw pixels (fitted on the training classes) on the test classes of ``parts``
    (the run's data, as :func:`~dmlkit.training.loop.load_run_data` cuts it for ``config``)."""
    pca = PCA(n_components=config.model.embedding_size, random_state=config.seed)
    pca.fit(parts.x_train.flatten(1).numpy())
    projected = torch.from_numpy(pca.transform(parts.x_test.flatten(1).numpy())).float()
    return _retrieval(projected, parts.y_test, config.evaluation.distance)


def fold_overrides(config: TrainConfig) -> list[list[str]]:
    """Overrides for the class-disjoint folds of the training classes: each pair held out in turn."""
    classes = sorted(config.data.train_classes)
    folds = []
    for held in itertools.combinations(classes, 2):
        kept = [c for c in classes if c not in held]
        batch = min(config.sampler.batch_size, config.sampler.m * len(kept))
        folds.append([f"data.train_classes={kept}", f"data.test_classes={list(held)}", f"sampler.batch_size={batch}"])
    return folds


def run(config_path: Path, overrides: list[str], name: str) -> dict[str, Any]:
    """Train the configuration with ``overrides``; its metrics, the untrained network's and PCA's."""
    config = load_config_file(config_path).apply_overrides(overrides)
    folder = create_run_folder(config.out_dir, f"{config_path.stem}-{name}")
    start = time.perf_counter()
    result = train(config, run_folder=folder)
    seconds = time.perf_counter() - start
    assert result.data is not None  # train() always returns the data it cut
    return {
        "config": str(config_path.relative_to(HERE.parent)),
        "run": name,
        "data": config.data.name,
        "train_classes": config.data.train_classes,
        "test_classes": config.data.test_classes,
        "test_samples": result.num_test,
        "seconds": round(seconds, 1),
        "trained": result.after,
        "untrained": result.before,
        "pca": pca_baseline(config, result.data),
        "run_folder": str(folder),
    }


def beats_both(row: dict[str, Any]) -> bool:
    """Whether the trained model is ahead of both baselines on every metric."""
    return all(row["trained"][m] > max(row["untrained"][m], row["pca"][m]) for m in METRICS)


def table(rows: list[dict[str, Any]], unit: str = "seeds") -> str:
    """A Markdown table: per configuration, the trained model and the two baselines (means over the runs: seeds
    or folds), the best value in bold, and the number of runs whose trained model beats both on every metric."""
    header = "| data (test classes) | model | " + " | ".join(LABELS[m] for m in METRICS) + f" | {unit} ahead of both |"
    lines = [header]
    lines.append("|---|---|" + "---|" * (len(METRICS) + 1))
    models = {"trained": "trained", "untrained": "untrained network", "pca": "PCA of raw pixels"}
    for config in dict.fromkeys(row["config"] for row in rows):
        runs = [row for row in rows if row["config"] == config]
        first = runs[0]
        if unit == "folds":
            name = f"{first['data']} ({len(runs)} folds of its training classes)"
        else:
            classes = ", ".join(map(str, first["test_classes"]))
            name = f"{first['data']} ({classes}; {first['test_samples']} images)"
        means = {model: {m: sum(r[model][m] for r in runs) / len(runs) for m in METRICS} for model in models}
        best = {m: max(values[m] for values in means.values()) for m in METRICS}
        ahead = f"{sum(beats_both(r) for r in runs)} of {len(runs)}"
        for model, label in models.items():
            values = means[model]
            cells = [f"**{values[m]:.3f}**" if values[m] == best[m] else f"{values[m]:.3f}" for m in METRICS]
            if model == "trained":
                seconds = sum(r["seconds"] for r in runs) / len(runs)
                label = f"trained ({seconds:.0f} s per run)"
            first_cell, last_cell = (name, ahead) if model == "trained" else ("", "")
            lines.append(f"| {first_cell} | {label} | " + " | ".join(cells) + f" | {last_cell} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("configs", nargs="*", help="configuration files (default: the three examples)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run each configuration with")
    parser.add_argument("--folds", action="store_true", help="the class-disjoint folds of the training classes")
    args = parser.parse_args(argv)
    configs = [Path(p).resolve() for p in args.configs] or CONFIGS
    rows = []
    for path in configs:
        if args.folds:
            for overrides in fold_overrides(load_config_file(path)):
                name = "fold" + "".join(filter(str.isdigit, overrides[1]))
                rows.append(run(path, overrides, name))
        else:
            rows.extend(run(path, [f"seed={seed}"], f"seed{seed}") for seed in args.seeds)
    out = Path("runs") / ("class_disjoint_folds.json" if args.folds else "class_disjoint.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, "folds" if args.folds else "seeds"))


if __name__ == "__main__":
    main(sys.argv[1:])
