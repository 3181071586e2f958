"""Class-disjoint retrieval on digits, MNIST and Fashion-MNIST: trained model vs. two baselines.

Each configuration in this folder trains on some classes and is tested on unseen ones. Next to the trained
model this script measures, on the same test images and with the same metrics (Precision@1, R-Precision and
MAP@R; Musgrave, Belongie and Lim, 2020, arXiv:2003.08505):

* the untrained network (same architecture and seed, before any step), and
* PCA of the raw pixels to the embedding size, fitted on the training classes' images.

With several seeds (``--seeds``), the trained and untrained rows are means over the seeds (PCA does not depend
on the seed) and a last column counts the seeds whose trained model beats both baselines on every metric.

Usage (from the repository root; MNIST and Fashion-MNIST are read from ``$DMLKIT_DATA`` or ``../shared/data``)::

    python examples/class_disjoint.py                                  # all three, seed 0
    python examples/class_disjoint.py --seeds 0 1 2                    # all three, three seeds each
    python examples/class_disjoint.py examples/mnist.yaml --seeds 0 1  # one

It prints a Markdown table and writes ``runs/class_disjoint.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.decomposition import PCA

from dmlkit.training.cli import load_config_file
from dmlkit.training.loop import METRICS, _retrieval, load_run_data, train
from dmlkit.training.run_folder import create_run_folder

HERE = Path(__file__).resolve().parent
CONFIGS = [HERE / "digits.yaml", HERE / "mnist.yaml", HERE / "fashion_mnist.yaml"]
LABELS = {"precision_at_1": "P@1", "r_precision": "R-Precision", "mean_average_precision_at_r": "MAP@R"}


def pca_baseline(config_path: Path) -> dict[str, float]:
    """Retrieval of PCA-projected raw pixels (fitted on the training classes) on the test classes."""
    config = load_config_file(config_path)
    parts = load_run_data(config)
    pca = PCA(n_components=config.model.embedding_size, random_state=config.seed)
    pca.fit(parts.x_train.flatten(1).numpy())
    projected = torch.from_numpy(pca.transform(parts.x_test.flatten(1).numpy())).float()
    return _retrieval(projected, parts.y_test, config.evaluation.distance)


def run(config_path: Path, seed: int) -> dict[str, object]:
    """Train the configuration with ``seed``; its metrics, the untrained network's and PCA's."""
    config = load_config_file(config_path).apply_overrides([f"seed={seed}"])
    folder = create_run_folder(config.out_dir, f"{config_path.stem}-seed{seed}")
    start = time.perf_counter()
    result = train(config, run_folder=folder)
    seconds = time.perf_counter() - start
    return {
        "config": str(config_path.relative_to(HERE.parent)),
        "seed": seed,
        "data": config.data.name,
        "train_classes": config.data.train_classes,
        "test_classes": config.data.test_classes,
        "test_samples": result.num_test,
        "seconds": round(seconds, 1),
        "trained": result.after,
        "untrained": result.before,
        "pca": pca_baseline(config_path),
        "run_folder": str(folder),
    }


def beats_both(row: dict[str, Any]) -> bool:
    """Whether the trained model is ahead of both baselines on every metric."""
    return all(row["trained"][m] > max(row["untrained"][m], row["pca"][m]) for m in METRICS)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per configuration, the trained model and the two baselines (means over the seeds run),
    the best value in bold, and the number of seeds whose trained model beats both baselines on every metric."""
    lines = ["| data (unseen classes) | model | " + " | ".join(LABELS[m] for m in METRICS) + " | seeds ahead of both |"]
    lines.append("|---|---|" + "---|" * (len(METRICS) + 1))
    models = {"trained": "trained", "untrained": "untrained network", "pca": "PCA of raw pixels"}
    for config in dict.fromkeys(row["config"] for row in rows):
        runs = [row for row in rows if row["config"] == config]
        first = runs[0]
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
    args = parser.parse_args(argv)
    configs = [Path(p).resolve() for p in args.configs] or CONFIGS
    rows = [run(path, seed) for path in configs for seed in args.seeds]
    out = Path("runs") / "class_disjoint.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
