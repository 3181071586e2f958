"""Think local: k-NN over triplet-trained embeddings against a softmax classifier, on noisy and long-tailed labels.

The items are the subject lines of 20 Newsgroups (Lang, 1995; the "bydate" split), a few words each, in 20
classes that are "wide": a class is many threads on unrelated sub-topics, each a tight cluster of near-identical
subjects. A classifier with one linear boundary per class has to cover them all; a k-nearest-neighbour vote over
a metric space only has to find the nearest cluster. The question is whether that locality makes a metric-learning
model more robust when training labels are wrong or classes are rare.

One :class:`~dmlkit.training.SetEncoder` (same vocabulary, sizes, optimiser, batch size and number of
optimisation steps) is trained two ways:

(a) ``triplet + kNN``: :class:`~dmlkit.losses.TripletMarginLoss` (Schroff et al., 2015, arXiv:1503.03832) on
    semi-hard triplets mined in class-balanced batches (:class:`~dmlkit.miners.TripletMarginMiner`,
    :class:`~dmlkit.samplers.MPerClassSampler`), classified by a distance-weighted
    :class:`~dmlkit.evaluation.KNNClassifier` whose ``k`` is chosen on the validation part;
(b) ``softmax``: a linear head with cross-entropy on shuffled batches, classified by the arg-max;

and also reported, without extra training: (d) ``softmax emb. + kNN``, the same k-NN vote over the softmax
model's embeddings (separates the effect of the loss from that of the classifier), and (c) ``TF-IDF + LR``, a
TF-IDF (sublinear tf) logistic regression from scikit-learn on the same tokens, its ``C`` chosen on validation.

Conditions: ``clean`` labels; ``noise20`` / ``noise40``: 20% / 40% of the official training split's labels
changed to another class uniformly at random (the validation part is noisy too, as it would be in practice);
``longtail``: the training split cut to class sizes decaying geometrically from the largest to the smallest
class, ratio 20 (which class is large is random per seed). A validation part (15%, stratified) is held out of
the official training split; the official test split is used once, for the reported numbers.

Usage (from the repository root; data from ``$DMLKIT_DATA`` or ``../shared/data``)::

    nice -n 10 python examples/think_local.py            # writes docs/think_local.md and docs/think_local.png

The results block of the Markdown file (between its ``<!-- results -->`` markers) is replaced; the rest is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dmlkit._atomic import atomic_write
from dmlkit.data import Vocabulary, load_20newsgroups, pad_labeled_items
from dmlkit.data.vocabulary import Item, tokenize
from dmlkit.evaluation.knn_classifier import KNNClassifier
from dmlkit.losses import TripletMarginLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.samplers import MPerClassSampler
from dmlkit.training import SetEncoder

#: the training conditions, in table order
CONDITIONS = ("clean", "noise20", "noise40", "longtail")
#: the methods, in table order
METHODS = ("triplet + kNN", "softmax", "softmax emb. + kNN", "TF-IDF + LR")
_NOISE = {"noise20": 0.2, "noise40": 0.4}
_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything both neural methods share, and the validation grids."""

    embedding_dim: int = 128
    output_dim: int = 64
    key_dim: int = 32
    dropout: float = 0.1
    epochs: int = 10
    batch_size: int = 120
    #: items per class in a triplet batch
    m: int = 6
    lr: float = 1e-2
    margin: float = 0.1
    min_count: int = 1
    validation_fraction: float = 0.15
    longtail_ratio: float = 20.0
    ks: tuple[int, ...] = (1, 3, 5, 10, 20, 50)
    cs: tuple[float, ...] = (1.0, 10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Items (strings or tag lists) and their integer labels, one per item."""

    items: list[Item]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise ValueError(
                f"Corpus: `labels` must be of the same length as `items` ({len(self.items)}), got length "
                f"{len(self.labels)}. Give one label per item."
            )

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, rows: Iterable[int]) -> Corpus:
        chosen = list(rows)
        return Corpus([self.items[i] for i in chosen], [self.labels[i] for i in chosen])


# ------------------------------------------------------------------------------------------------------- data


def load_subjects(root: str | None, split: str) -> tuple[Corpus, tuple[str, ...]]:
    """The subject lines of one 20 Newsgroups split with their labels, without those that have no word."""
    corpus = load_20newsgroups(root, split=split)
    keep = [i for i, subject in enumerate(corpus.subjects) if tokenize(subject)]
    return Corpus([corpus.subjects[i] for i in keep], [corpus.labels[i] for i in keep]), corpus.groups


def flip_labels(labels: Sequence[int], fraction: float, num_classes: int, rng: np.random.Generator) -> list[int]:
    """``round(fraction * n)`` labels, chosen at random, each changed to one of the other classes at random."""
    y = np.array(labels, dtype=np.int64)  # a copy: the caller's labels stay as they were
    chosen = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    y[chosen] = (y[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    return y.tolist()


def long_tail_rows(labels: Sequence[int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Rows keeping ``n_max * ratio ** (-r / (C - 1))`` items of the class ranked ``r`` (random ranks).

    ``n_max`` is the size of the smallest class, so that every class can give its share.
    """
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    ranks = rng.permutation(len(classes))
    sizes = np.maximum(1, np.round(counts.min() * ratio ** (-ranks / max(1, len(classes) - 1)))).astype(int)
    rows = [rng.choice(np.flatnonzero(y == c), size=s, replace=False) for c, s in zip(classes, sizes, strict=True)]
    return np.sort(np.concatenate(rows))


def validation_split(labels: Sequence[int], fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): ``fraction`` of each class (at least one item stays in training)."""
    y = np.asarray(labels)
    held = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        held.append(rows[: min(len(rows) - 1, round(fraction * len(rows)))])
    validation = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), validation), validation


def make_condition(train: Corpus, condition: str, num_classes: int, settings: Settings, seed: int) -> Corpus:
    """The official training split as seen under ``condition`` (labels flipped, or classes cut)."""
    if condition not in CONDITIONS:
        raise ValueError(f"make_condition: `condition` must be one of {', '.join(CONDITIONS)}, got {condition!r}.")
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    if condition in _NOISE:
        return Corpus(train.items, flip_labels(train.labels, _NOISE[condition], num_classes, rng))
    if condition == "longtail":
        return train.subset(long_tail_rows(train.labels, settings.longtail_ratio, rng).tolist())
    return train


# ------------------------------------------------------------------------------------------------- training


def _encoder(vocabulary: Vocabulary, settings: Settings) -> SetEncoder:
    return SetEncoder(
        len(vocabulary),
        settings.embedding_dim,
        settings.output_dim,
        key_dim=settings.key_dim,
        dropout=settings.dropout,
    )


def _steps_per_epoch(n: int, settings: Settings) -> int:
    return max(1, n // settings.batch_size)


def _fit(
    modules: nn.Module,
    loader: Iterable[Any],
    step: Callable[[Any, Tensor], Tensor],
    settings: Settings,
    on_epoch: Callable[[int], None],
    progress: bool,
    label: str,
) -> None:
    optimizer = torch.optim.Adam(modules.parameters(), lr=settings.lr, foreach=True)
    modules.train()
    for epoch in tqdm(range(settings.epochs), desc=label, leave=False, disable=not progress):
        on_epoch(epoch)
        for inputs, labels in loader:
            loss = step(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    modules.eval()


def train_triplet(
    ids: list[list[int]], labels: list[int], vocabulary: Vocabulary, settings: Settings, seed: int, progress: bool
) -> SetEncoder:
    """A SetEncoder trained with the triplet margin loss on semi-hard triplets of class-balanced batches."""
    torch.manual_seed(seed)
    model = _encoder(vocabulary, settings)
    steps = _steps_per_epoch(len(ids), settings)
    sampler = MPerClassSampler(
        labels,
        m=settings.m,
        batch_size=settings.batch_size,
        length_before_new_iter=steps * settings.batch_size,
        seed=seed,
    )
    data = list(zip(ids, labels, strict=True))
    loader: DataLoader[Any] = DataLoader(
        data,  # type: ignore[arg-type]  # a list is a map-style data set
        batch_size=settings.batch_size,
        sampler=sampler,
        collate_fn=pad_labeled_items,
    )
    miner = TripletMarginMiner(margin=settings.margin, type_of_triplets="semihard")
    loss_fn = TripletMarginLoss(margin=settings.margin)

    def step(inputs: Any, y: Tensor) -> Tensor:
        embeddings = model(inputs)
        assert isinstance(embeddings, Tensor)
        return loss_fn(embeddings, y, miner(embeddings, y))

    _fit(model, loader, step, settings, sampler.set_epoch, progress, "triplet")
    return model


def train_softmax(
    ids: list[list[int]],
    labels: list[int],
    vocabulary: Vocabulary,
    num_classes: int,
    settings: Settings,
    seed: int,
    progress: bool,
) -> tuple[SetEncoder, nn.Linear]:
    """A SetEncoder and a linear head trained with cross-entropy on shuffled batches (the same steps)."""
    torch.manual_seed(seed)
    model = _encoder(vocabulary, settings)
    head = nn.Linear(settings.output_dim, num_classes)
    data = list(zip(ids, labels, strict=True))
    generator = torch.Generator().manual_seed(seed)
    batch = min(settings.batch_size, len(data))
    loader: DataLoader[Any] = DataLoader(
        data,  # type: ignore[arg-type]  # a list is a map-style data set
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        generator=generator,
        collate_fn=pad_labeled_items,
    )
    both = nn.ModuleList([model, head])
    cross_entropy = nn.CrossEntropyLoss()

    def step(inputs: Any, y: Tensor) -> Tensor:
        return cross_entropy(head(model(inputs)), y)

    _fit(both, loader, step, settings, lambda epoch: None, progress, "softmax")
    return model, head


# ----------------------------------------------------------------------------------------------- evaluation


def macro_f1(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def accuracy(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray) -> float:
    return float(np.mean(np.asarray(truth) == np.asarray(predicted)))


def choose_k(
    train_emb: Tensor, train_labels: Sequence[int], val_emb: Tensor, val_labels: Sequence[int], ks: Sequence[int]
) -> tuple[int, float]:
    """``(k, accuracy)``: the ``k`` of the best validation accuracy (the smallest on ties) of a distance-weighted
    cosine k-NN, and that accuracy."""
    too_large = [k for k in ks if k > len(train_labels)]
    if too_large:
        raise ValueError(
            f"choose_k: every k must be <= the number of training items ({len(train_labels)}), got {too_large}. "
            "Lower the largest k (Settings.ks) or train on more items."
        )
    scores = []
    for k in ks:
        clf = KNNClassifier(n_neighbors=k, weights="distance", metric="cosine").fit(train_emb, list(train_labels))
        scores.append(accuracy(val_labels, clf.predict(val_emb)))
    best = int(np.argmax(scores))
    return int(ks[best]), scores[best]


def knn_predict(train_emb: Tensor, train_labels: Sequence[int], test_emb: Tensor, k: int) -> np.ndarray:
    clf = KNNClassifier(n_neighbors=k, weights="distance", metric="cosine").fit(train_emb, list(train_labels))
    return np.asarray(clf.predict(test_emb))


def tfidf_logistic_regression(
    train: Corpus, validation: Corpus, test: Corpus, settings: Settings
) -> tuple[np.ndarray, float, float]:
    """``(test predictions, C, validation accuracy)`` of a TF-IDF + logistic regression, ``C`` chosen on validation
    accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, sublinear_tf=True)
    x_train = vectorizer.fit_transform(train.items)
    x_val, x_test = vectorizer.transform(validation.items), vectorizer.transform(test.items)
    best: tuple[float, float, Any] = (-1.0, 0.0, None)
    for c in settings.cs:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, train.labels)
        score = accuracy(validation.labels, model.predict(x_val))
        if score > best[0]:
            best = (score, c, model)
    return np.asarray(best[2].predict(x_test)), best[1], best[0]


def repeated_items(train: Corpus, test: Corpus) -> np.ndarray:
    """Whether each test item has the same multiset of tokens as some training item (a repeated subject)."""
    seen = {tuple(sorted(tokenize(item))) for item in train.items}
    return np.array([tuple(sorted(tokenize(item))) in seen for item in test.items], dtype=bool)


def run_one(
    train: Corpus, test: Corpus, num_classes: int, condition: str, seed: int, settings: Settings, progress: bool = False
) -> dict[str, Any]:
    """Train and test every method on one condition and seed.

    Returns ``{method: (accuracy, macro_f1), ...}`` with the chosen ``k`` and ``C``, the validation accuracies,
    and under ``"split"`` each method's test accuracy on the repeated and on the novel test items
    (:func:`repeated_items`).
    """
    seen = make_condition(train, condition, num_classes, settings, seed)
    fit_rows, val_rows = validation_split(seen.labels, settings.validation_fraction, np.random.default_rng([seed, 99]))
    fit_part, val_part = seen.subset(fit_rows.tolist()), seen.subset(val_rows.tolist())
    vocabulary = Vocabulary.build(fit_part.items, min_count=settings.min_count)
    fit_ids, val_ids, test_ids = (vocabulary.encode_many(c.items) for c in (fit_part, val_part, test))
    repeated = repeated_items(fit_part, test)
    truth = np.asarray(test.labels)
    result: dict[str, Any] = {
        "condition": condition,
        "seed": seed,
        "train_size": len(fit_part),
        "repeated_fraction": float(repeated.mean()),
        "validation accuracy": {},
        "split": {},
    }

    def record(method: str, predicted: np.ndarray) -> None:
        result[method] = (accuracy(truth, predicted), macro_f1(truth, predicted))
        correct = truth == np.asarray(predicted)
        result["split"][method] = (
            float(correct[repeated].mean()) if repeated.any() else float("nan"),
            float(correct[~repeated].mean()) if (~repeated).any() else float("nan"),
        )

    triplet = train_triplet(fit_ids, fit_part.labels, vocabulary, settings, seed, progress)
    softmax, head = train_softmax(fit_ids, fit_part.labels, vocabulary, num_classes, settings, seed, progress)
    for name, model in (("triplet + kNN", triplet), ("softmax emb. + kNN", softmax)):
        fit_emb, val_emb, test_emb = (model.embed_items(ids) for ids in (fit_ids, val_ids, test_ids))
        k, result["validation accuracy"][name] = choose_k(
            fit_emb, fit_part.labels, val_emb, val_part.labels, settings.ks
        )
        record(name, knn_predict(fit_emb, fit_part.labels, test_emb, k))
        result[f"{name} k"] = k
    with torch.no_grad():
        val_predicted = head(softmax.embed_items(val_ids)).argmax(1).numpy()
        result["validation accuracy"]["softmax"] = accuracy(val_part.labels, val_predicted)
        record("softmax", head(softmax.embed_items(test_ids)).argmax(1).numpy())
    predicted, c, result["validation accuracy"]["TF-IDF + LR"] = tfidf_logistic_regression(
        fit_part, val_part, test, settings
    )
    record("TF-IDF + LR", predicted)
    result["TF-IDF + LR C"] = c
    return result


def run_experiment(
    train: Corpus,
    test: Corpus,
    num_classes: int,
    conditions: Sequence[str] = CONDITIONS,
    seeds: Sequence[int] = (0, 1, 2),
    settings: Settings | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """:func:`run_one` for every condition and seed."""
    settings = settings or Settings()
    for name in conditions:
        if name not in CONDITIONS:
            raise ValueError(f"run_experiment: unknown condition {name!r}; choose from {', '.join(CONDITIONS)}.")
    runs = [(c, s) for c in conditions for s in seeds]
    results = []
    for condition, seed in tqdm(runs, desc="think local", disable=not progress):
        results.append(run_one(train, test, num_classes, condition, seed, settings, progress))
    return results


# -------------------------------------------------------------------------------------------------- reports


def summarize(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """``{(condition, method): {"accuracy": (mean, std), "macro_f1": (mean, std)}}`` over the seeds."""
    summary: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    conditions = [c for c in CONDITIONS if any(r["condition"] == c for r in results)]
    for condition in conditions:
        rows = [r for r in results if r["condition"] == condition]
        for method in METHODS:
            values = np.array([r[method] for r in rows])
            # population std over the seeds (ddof=0), so one seed gives 0 rather than NaN
            summary[(condition, method)] = {
                "accuracy": (float(values[:, 0].mean()), float(values[:, 0].std())),
                "macro_f1": (float(values[:, 1].mean()), float(values[:, 1].std())),
            }
    return summary


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """Test accuracy and macro-F1 (mean ± std over seeds, in %), one row per method, best mean in bold."""
    summary = summarize(results)
    conditions = [c for c in CONDITIONS if any(key[0] == c for key in summary)]
    header = "| method | " + " | ".join(f"{c} acc | {c} macro-F1" for c in conditions) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(conditions))]
    best = {
        (c, metric): max(summary[(c, m)][metric][0] for m in METHODS)
        for c in conditions
        for metric in ("accuracy", "macro_f1")
    }
    for method in METHODS:
        cells = []
        for c in conditions:
            for metric in ("accuracy", "macro_f1"):
                mean, std = summary[(c, method)][metric]
                text = f"{100 * mean:.1f} ± {100 * std:.1f}"
                cells.append(f"**{text}**" if mean == best[(c, metric)] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_table(results: Sequence[dict[str, Any]]) -> str:
    """Test accuracy (mean over seeds, in %) on the repeated and on the novel test items (:func:`repeated_items`)."""
    conditions = [c for c in CONDITIONS if any(r["condition"] == c for r in results)]
    share = {c: np.mean([r["repeated_fraction"] for r in results if r["condition"] == c]) for c in conditions}
    header = "| method | " + " | ".join(f"{c} repeated ({100 * share[c]:.0f}%) | {c} novel" for c in conditions) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(conditions))]
    for method in METHODS:
        cells = []
        for c in conditions:
            pairs = np.array([r["split"][method] for r in results if r["condition"] == c])
            cells += [f"{100 * np.nanmean(pairs[:, 0]):.1f}", f"{100 * np.nanmean(pairs[:, 1]):.1f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars of test accuracy and macro-F1 per condition and method (mean, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    summary = summarize(results)
    conditions = [c for c in CONDITIONS if any(key[0] == c for key in summary)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(METHODS)
    x = np.arange(len(conditions))
    for ax, metric, title in zip(axes, ("accuracy", "macro_f1"), ("test accuracy", "test macro-F1"), strict=True):
        for j, method in enumerate(METHODS):
            means = [100 * summary[(c, method)][metric][0] for c in conditions]
            stds = [100 * summary[(c, method)][metric][1] for c in conditions]
            ax.bar(x + (j - (len(METHODS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=method)
        ax.set_xticks(x, conditions)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% (mean ± std over seeds)")
    axes[1].legend(loc="lower left", fontsize=8)
    fig.suptitle("20 Newsgroups subject lines: SetEncoder trained two ways, and TF-IDF + LR")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def results_block(results: Sequence[dict[str, Any]], command: str, seconds: float, settings: Settings) -> str:
    """The Markdown block the script writes: setting, machine, versions, time, the table and chosen k / C."""
    import sklearn

    ks = {m: sorted({r[f"{m} k"] for r in results}) for m in ("triplet + kNN", "softmax emb. + kNN")}
    cs = sorted({r["TF-IDF + LR C"] for r in results})
    sizes = sorted({(r["condition"], r["train_size"]) for r in results}, key=lambda cs: CONDITIONS.index(cs[0]))
    return "\n".join(
        [
            _MARKERS[0],
            f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {platform.system()}, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}  ",
            f"Time: {seconds / 60:.1f} min for {len(results)} runs (conditions x seeds)  ",
            f"Settings: `{settings}`  ",
            "Training items per condition (after the validation hold-out): " + ", ".join(f"{c} {n}" for c, n in sizes),
            "",
            markdown_table(results),
            "",
            "Test accuracy on the test subjects whose words (as a multiset) are those of some training subject "
            "(repeated; their share in brackets) and on the others (novel), mean over seeds:",
            "",
            split_table(results),
            "",
            f"k chosen on validation: triplet {ks['triplet + kNN']}, softmax embeddings {ks['softmax emb. + kNN']}; "
            f"C of the logistic regression: {cs}.",
            _MARKERS[1],
        ]
    )


def write_markdown(path: str | Path, block: str) -> Path:
    """Replace the results block of ``path`` (between the markers), or write a file holding only the block."""
    target = Path(path)
    text = target.read_text(encoding="utf-8") if target.is_file() else ""
    start, end = (text.find(m) for m in _MARKERS)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(_MARKERS[1]) :]
    else:
        text = (text.rstrip() + "\n\n" if text else "# Think local\n\n") + block + "\n"
    return atomic_write(target, lambda f: f.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="the data folder (default: $DMLKIT_DATA, else ../shared/data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--markdown", default="docs/think_local.md")
    parser.add_argument("--plot", default="docs/think_local.png")
    parser.add_argument("--json", default="runs/think_local.json", help="the per-seed results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        train, groups = load_subjects(args.data, "train")
        test, _ = load_subjects(args.data, "test")
    except FileNotFoundError as error:
        print(f"think_local: error: {error}", file=sys.stderr)
        return 2
    settings = dataclasses.replace(Settings(), epochs=args.epochs)
    # one BLAS / OpenMP thread pool size for numpy, scikit-learn and faiss too: on a shared machine, more
    # threads than free cores spin-wait for each other (a logistic regression fit went from 3 s to 36 s)
    with threadpool_limits(args.threads):
        results = run_experiment(train, test, len(groups), args.conditions, args.seeds, settings, not args.no_progress)
    seconds = time.perf_counter() - started
    command = "python examples/think_local.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        command += " " + " ".join(sys.argv[1:])
    print(markdown_table(results))
    print(f"{seconds / 60:.1f} min")
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.markdown, results_block(results, command, seconds, settings))
    plot(results, args.plot)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"settings": dataclasses.asdict(settings), "seconds": seconds, "results": results}, indent=1)
    atomic_write(args.json, lambda f: f.write(text.encode("utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
