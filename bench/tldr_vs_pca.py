"""TLDR against PCA at the same output dimension: class-disjoint retrieval on Fashion-MNIST pixel vectors.

The reducers are fitted on the training images of classes 0-4 (784 pixel values in [0, 1] per image) and
evaluated on the test images of the unseen classes 5-9 (each image queries the other 4,999), and, for
reference, on all 10,000 test images. Metrics: MAP@R and Precision@1 (Musgrave, Belongie and Lim, 2020,
arXiv:2003.08505) from :class:`dmlkit.evaluation.AccuracyCalculator`, ranking by Euclidean distance, plus
MAP@R by cosine similarity. Rows: the raw pixels (784-d), and at each output dimension PCA, PCA with whitening
(unit variance per component; TLDR's Barlow Twins objective also decorrelates and equalises its outputs) and
TLDR (Kalantidis et al., 2022, arXiv:2110.09455; linear encoder, :class:`dmlkit.apps.TLDR`).

The k-nearest-neighbour graph of the training images is computed once and shared by the TLDR fits.

Usage (from the repository root; Fashion-MNIST is read from ``$DMLKIT_DATA`` or ``../shared/data``)::

    nice -n 10 python bench/tldr_vs_pca.py [--dims 8 16 32] [--epochs 20] [--train-rows 0] [--json OUT]

It prints a Markdown table (and the timings) and, with ``--json``, writes the numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

COLUMNS = (
    ("unseen", "euclidean", "mean_average_precision_at_r", "MAP@R 5-9"),
    ("unseen", "euclidean", "precision_at_1", "P@1 5-9"),
    ("unseen", "cosine", "mean_average_precision_at_r", "MAP@R 5-9 (cos)"),
    ("all", "euclidean", "mean_average_precision_at_r", "MAP@R 0-9"),
)


def retrieval(codes: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """The table's metrics of already reduced test vectors (``codes["unseen"]``, ``codes["all"]``)."""
    from dmlkit.evaluation import AccuracyCalculator
    from dmlkit.evaluation.knn import ExactKNN

    out: dict[str, float] = {}
    for split, distance, metric, label in COLUMNS:
        calculator = AccuracyCalculator(
            include=(metric,), k="max_bin_count", knn_func=ExactKNN(distance=distance), device="cpu"
        )
        x = torch.from_numpy(np.ascontiguousarray(codes[split], dtype=np.float32))
        out[label] = float(calculator.get_accuracy(x, torch.from_numpy(labels[split]))[metric])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--epochs", type=int, default=20, help="TLDR epochs (default 20)")
    parser.add_argument("--neighbors", type=int, default=5, help="TLDR neighbours (default 5)")
    parser.add_argument("--train-rows", type=int, default=0, help="random training subsample (0: all 30,000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sklearn.decomposition import PCA

    import dmlkit
    from dmlkit.apps import TLDR
    from dmlkit.data import load_fashion_mnist

    start = time.perf_counter()
    x_train, y_train = load_fashion_mnist(split="train")
    x_test, y_test = load_fashion_mnist(split="test")
    train = x_train.flatten(1)[y_train < 5].numpy()
    if args.train_rows:
        rows = np.random.default_rng(args.seed).choice(train.shape[0], args.train_rows, replace=False)
        train = train[np.sort(rows)]
    unseen = (y_test >= 5).numpy()
    test_all = x_test.flatten(1).numpy()
    test = {"unseen": test_all[unseen], "all": test_all}
    labels = {"unseen": y_test.numpy()[unseen], "all": y_test.numpy()}
    print(f"train: {train.shape[0]} images of classes 0-4; test: {unseen.sum()} images of classes 5-9", flush=True)

    rows_out: list[dict[str, Any]] = [{"method": "raw pixels", "dim": 784, **retrieval(test, labels)}]
    timings: dict[str, float] = {}
    tldr = TLDR(n_components=min(args.dims), n_neighbors=args.neighbors)
    t0 = time.perf_counter()
    graph = tldr.find_neighbors(train - train.mean(axis=0))
    timings["knn graph"] = time.perf_counter() - t0
    print(f"k-NN graph: {timings['knn graph']:.1f} s", flush=True)

    reducers: list[tuple[str, Callable[[int], Any]]] = [
        ("PCA", lambda d: PCA(n_components=d, random_state=args.seed)),
        ("PCA + whitening", lambda d: PCA(n_components=d, whiten=True, random_state=args.seed)),
        (
            "TLDR (linear)",
            lambda d: TLDR(n_components=d, n_neighbors=args.neighbors, epochs=args.epochs, random_state=args.seed),
        ),
    ]
    for dim in args.dims:
        for name, make in reducers:
            reducer = make(dim)
            t0 = time.perf_counter()
            if isinstance(reducer, TLDR):
                reducer.fit(train, neighbors=graph)
            else:
                reducer.fit(train)
            timings[f"{name} {dim}"] = time.perf_counter() - t0
            codes = {split: np.asarray(reducer.transform(values)) for split, values in test.items()}
            row = {"method": name, "dim": dim, **retrieval(codes, labels)}
            rows_out.append(row)
            print(f"{name} d={dim}: fit {timings[f'{name} {dim}']:.1f} s; {row}", flush=True)

    total = time.perf_counter() - start
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s); "
        f"torch {torch.__version__}, numpy {np.__version__}, scikit-learn {__import__('sklearn').__version__}, "
        f"dmlkit {dmlkit.__version__}, Python {platform.python_version()}"
    )
    labels_row = [label for *_, label in COLUMNS]
    print()
    print("| method | dim | " + " | ".join(labels_row) + " |")
    print("|---|---:|" + "---:|" * len(labels_row))
    for row in rows_out:
        best = {label: max(r[label] for r in rows_out if r["dim"] == row["dim"]) for label in labels_row}
        cells = [
            f"**{row[c]:.4f}**" if row[c] == best[c] and row["dim"] != 784 else f"{row[c]:.4f}" for c in labels_row
        ]
        print(f"| {row['method']} | {row['dim']} | " + " | ".join(cells) + " |")
    print(f"\n{machine}; total {total / 60:.1f} min")
    for key, value in timings.items():
        print(f"  {key}: {value:.1f} s")
    if args.json:
        from dmlkit._atomic import atomic_write

        body = {"args": vars(args), "machine": machine, "rows": rows_out, "timings_s": timings, "total_s": total}
        atomic_write(args.json, lambda f: f.write(json.dumps(body, indent=2).encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
