"""Class-disjoint retrieval on digits, MNIST and Fashion-MNIST: trained model vs. two baselines.

Each configuration in this folder trains on some classes and is tested on unseen ones. Next to the trained
model this script measures, on the same test images and with the same metrics (Precision@1, R-Precision and
MAP@R; Musgrave, Belongie and Lim, 2020, arXiv:2003.08505):

* the untrained network (same architecture and seed, before any step), and
* PCA of the raw pixels to the embedding size, fitted on the training classes' images.

Usage (from the repository root; MNIST and Fashion-MNIST are read from ``$DMLKIT_DATA`` or ``../shared/data``)::

    python examples/class_disjoint.py                      # all three
    python examples/class_disjoint.py examples/mnist.yaml  # one

It prints a Markdown table and writes ``runs/class_disjoint.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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


def run(config_path: Path) -> dict[str, object]:
    config = load_config_file(config_path)
    folder = create_run_folder(config.out_dir, config_path.stem)
    start = time.perf_counter()
    result = train(config, run_folder=folder)
    seconds = time.perf_counter() - start
    return {
        "config": str(config_path.relative_to(HERE.parent)),
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


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table: per data set, the trained model and the two baselines; the best value in bold."""
    lines = ["| data (unseen classes) | model | " + " | ".join(LABELS[m] for m in METRICS) + " |"]
    lines.append("|---|---|" + "---|" * len(METRICS))
    models = {"trained": "trained", "untrained": "untrained network", "pca": "PCA of raw pixels"}
    for row in rows:
        name = f"{row['data']} ({', '.join(map(str, row['test_classes']))}; {row['test_samples']} images)"  # type: ignore[arg-type]
        results: dict[str, dict[str, float]] = {model: row[model] for model in models}  # type: ignore[misc]
        best = {m: max(values[m] for values in results.values()) for m in METRICS}
        for model, label in models.items():
            values = results[model]
            cells = [f"**{values[m]:.3f}**" if values[m] == best[m] else f"{values[m]:.3f}" for m in METRICS]
            if model == "trained":
                label = f"trained ({row['seconds']} s)"
            lines.append(f"| {name if model == 'trained' else ''} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    configs = [Path(p).resolve() for p in paths] or CONFIGS
    rows = [run(path) for path in configs]
    out = Path("runs") / "class_disjoint.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
