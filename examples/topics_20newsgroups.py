"""Top2Vec topic discovery on 20 Newsgroups, against latent Dirichlet allocation with the same number of topics.

Top2Vec (Angelov, 2020, arXiv:2008.09470) is :class:`~dmlkit.apps.topics.TopicDiscovery` with its defaults (the
paper's): Doc2Vec DBOW with interleaved skip-gram word training (300 dimensions, window 15, hierarchical softmax,
sub-sampling 1e-5, words from 50 occurrences), UMAP to 5 dimensions (cosine, 15 neighbours), HDBSCAN (minimum
cluster size 15, excess of mass). No stop-word list is used anywhere.

The corpus is the train and test splits of 20 Newsgroups together (18,846 posts; ``--split train`` for the
11,314 training posts only), with headers, quoted lines and signatures removed by the loader; posts with no word
of the vocabulary (empty after the removals, mostly) are left out. The script reports

1. the number of topics found, the fit time by step, the NMI and AMI of the documents' topics against their
   newsgroups (for the default assignment, for Top2Vec's nearest-topic-vector assignment, and for the documents of
   dense clusters only);
2. the top 10 words of the 10 largest topics, with each topic's most common newsgroup and its share;
3. where "the", "and", "of" (and any English stop word of scikit-learn's list) appear among the topic words;
4. the same topics reduced to 20 (hierarchical merging), NMI/AMI;
5. scikit-learn's ``LatentDirichletAllocation`` (batch variational Bayes) with the number of topics found, on the
   same documents and the same vocabulary (``CountVectorizer`` with the same tokeniser, no stop words): NMI/AMI of
   each document's most probable topic, fit time, its top words; then the same with scikit-learn's English stop
   words removed from the vocabulary; and LDA with 20 topics against the reduction to 20.

Usage (from the repository root; needs ``pip install "dmlkit[topics]"``, data from ``$DMLKIT_DATA`` or
``../shared/data``)::

    nice -n 10 python examples/topics_20newsgroups.py
    nice -n 10 python examples/topics_20newsgroups.py --epochs 20 --workers 2 --lda-iter 5

It prints Markdown and writes ``runs/topics_20newsgroups.json``.
"""

from __future__ import annotations

import os

# Thread pools are sized before numpy, numba and torch start them: the machine may be shared.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_variable, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from dmlkit._atomic import atomic_write  # noqa: E402
from dmlkit.apps.topics import TopicDiscovery, build_vocabulary, tokenize  # noqa: E402
from dmlkit.data import load_20newsgroups  # noqa: E402

OUT = Path("runs") / "topics_20newsgroups.json"
COMMON = ("the", "and", "of")


def load(split: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    parts = ["train", "test"] if split == "all" else [split]
    texts: list[str] = []
    labels: list[int] = []
    groups: tuple[str, ...] = ()
    for part in parts:
        corpus = load_20newsgroups(split=part, remove_quotes=True, remove_signature=True)
        texts += corpus.texts
        labels += corpus.labels
        groups = corpus.groups
    return texts, np.asarray(labels), groups


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    return {
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "ami": float(adjusted_mutual_info_score(truth, predicted)),
    }


def stop_word_report(words: np.ndarray, top: int) -> dict[str, Any]:
    """Where "the", "and", "of" appear as ``[topic, rank]`` in the topics' word lists (all of them, 50 words for
    Top2Vec), and the English stop words among each topic's ``top`` first words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    where = {word: [[int(t), int(r) + 1] for t, r in np.argwhere(words == word)] for word in COMMON}
    in_top = Counter(w for row in words[:, :top] for w in row if w in ENGLISH_STOP_WORDS)
    topics_with = int(sum(any(w in ENGLISH_STOP_WORDS for w in row[:top]) for row in words))
    return {
        "common_words_at_topic_rank": where,
        "stop_words_in_top": dict(in_top.most_common()),
        "topics_with_a_stop_word_in_top": topics_with,
    }


def dominant_groups(labels: np.ndarray, topics: np.ndarray, groups: Sequence[str], ids: Sequence[int]) -> list[str]:
    out = []
    for topic in ids:
        members = labels[topics == topic]
        if not len(members):
            out.append("(no documents)")
            continue
        best, count = Counter(members.tolist()).most_common(1)[0]
        out.append(f"{groups[best]} ({100 * count / len(members):.0f}%)")
    return out


def run_lda(
    documents: list[str], vocabulary: list[str], num_topics: int, seed: int, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each document's most probable LDA topic, the topics' top 10 words (largest topics first), and fit seconds."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    counts = CountVectorizer(vocabulary=vocabulary, tokenizer=tokenize, lowercase=False, token_pattern=None)
    matrix = counts.fit_transform(documents)
    start = time.perf_counter()
    lda = LatentDirichletAllocation(n_components=num_topics, max_iter=max_iter, random_state=seed)
    theta = lda.fit_transform(matrix)
    seconds = time.perf_counter() - start
    topics = theta.argmax(axis=1)
    order = np.argsort(-np.bincount(topics, minlength=num_topics), kind="stable")
    rank = np.empty(num_topics, dtype=np.int64)
    rank[order] = np.arange(num_topics)
    words = np.asarray(vocabulary)[np.argsort(-lda.components_, axis=1)[:, :10]][order]
    return rank[topics], words, seconds


def versions() -> dict[str, str]:
    import gensim
    import scipy
    import sklearn
    import umap

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "gensim": gensim.__version__,
        "umap-learn": umap.__version__,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | topics | NMI | AMI | fit (s) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['topics']} | {row['nmi']:.3f} | {row['ami']:.3f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def word_table(words: np.ndarray, sizes: Sequence[int], groups: Sequence[str]) -> str:
    lines = ["| topic | documents | top 10 words | most common newsgroup |", "|---:|---:|---|---|"]
    for topic, (row, size, group) in enumerate(zip(words, sizes, groups, strict=True)):
        lines.append(f"| {topic} | {size} | {' '.join(row[:10])} | {group} |")
    return "\n".join(lines)


def save(result: dict[str, Any], rows: list[dict[str, Any]], started: float) -> None:
    """Write what is measured so far (the file is complete once the script ends)."""
    result["rows"] = rows
    result["total_seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time()
    result["versions"] = versions()
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()}
    OUT.parent.mkdir(exist_ok=True)
    atomic_write(OUT, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode("utf-8")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--split", default="all", choices=["train", "test", "all"], help="20 Newsgroups posts")
    parser.add_argument("--epochs", type=int, default=40, help="Doc2Vec epochs (the paper: 40)")
    parser.add_argument("--workers", type=int, default=2, help="Doc2Vec threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lda-iter", type=int, default=10, help="LDA passes (scikit-learn's default: 10)")
    parser.add_argument("--no-lda", action="store_true", help="skip LDA")
    parser.add_argument("--reduce", type=int, default=20, help="also reduce the topics to this many")
    parser.add_argument("--save", metavar="PATH", help="also save the fitted model (for 'dmlkit topics show')")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    texts, labels, groups = load(args.split)
    _, empty = build_vocabulary([tokenize(t) for t in texts], 50)
    keep = np.setdiff1d(np.arange(len(texts)), empty)
    documents, truth = [texts[i] for i in keep], labels[keep]
    print(f"{len(documents)} posts ({len(empty)} without any vocabulary word left out of {len(texts)})")

    model = TopicDiscovery(epochs=args.epochs, workers=args.workers, random_state=args.seed)
    start = time.perf_counter()
    model.fit(documents)
    fit_seconds = time.perf_counter() - start
    assert model.labels_ is not None and model.cluster_labels_ is not None and model.topic_vectors_ is not None
    assert model.document_vectors_ is not None
    k = model.get_num_topics()
    sizes, _ = model.get_topic_sizes()
    nearest = np.argmax(model.document_vectors_ @ model.topic_vectors_.T, axis=1)
    dense = model.cluster_labels_ >= 0
    words = model.get_topics().words
    result: dict[str, Any] = {
        "documents": len(documents),
        "left_out": len(empty),
        "split": args.split,
        "epochs": args.epochs,
        "workers": args.workers,
        "seed": args.seed,
        "vocabulary": len(model.vocabulary_ or []),
        "topics": k,
        "noise_fraction": float(1 - dense.mean()),
        "fit_seconds": fit_seconds,
        "timings": model.timings_,
        "top2vec": scores(truth, model.labels_),
        "top2vec_nearest": scores(truth, nearest),
        "top2vec_dense_only": scores(truth[dense], model.labels_[dense]),
        "largest_topics": [
            {"size": int(s), "words": list(w[:10]), "newsgroup": g}
            for s, w, g in zip(
                sizes[:10], words[:10], dominant_groups(truth, model.labels_, groups, range(min(10, k))), strict=True
            )
        ],
        "stop_words": {"top10": stop_word_report(words, 10), "top50": stop_word_report(words, 50)},
    }
    rows = [
        {"method": "Top2Vec (cluster assignment)", "topics": k, **result["top2vec"], "seconds": fit_seconds},
        {"method": "Top2Vec (nearest topic vector)", "topics": k, **result["top2vec_nearest"], "seconds": fit_seconds},
    ]
    start = time.perf_counter()
    model.hierarchical_topic_reduction(args.reduce)
    reduce_seconds = time.perf_counter() - start
    reduced_words = model.get_topics(reduced=True).words
    reduced_sizes, _ = model.get_topic_sizes(reduced=True)
    reduced_labels = model.doc_topics(reduced=True)
    result["reduced"] = {
        "topics": args.reduce,
        "seconds": reduce_seconds,
        **scores(truth, reduced_labels),
        "words": [list(w[:10]) for w in reduced_words],
        "sizes": reduced_sizes.tolist(),
        "newsgroups": dominant_groups(truth, reduced_labels, groups, range(args.reduce)),
        "stop_words_top10": stop_word_report(reduced_words, 10),
    }
    rows.append(
        {
            "method": f"Top2Vec reduced to {args.reduce}",
            "topics": args.reduce,
            **scores(truth, reduced_labels),
            "seconds": fit_seconds + reduce_seconds,
        }
    )

    if args.save:
        model.save(args.save)
    save(result, rows, started)
    steps = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in model.timings_.items())
    print(f"\n## {k} topics found in {fit_seconds:.0f} s ({steps})")
    print(f"noise documents (assigned to the nearest topic): {100 * result['noise_fraction']:.1f}%")
    print(
        f"NMI/AMI: {result['top2vec']['nmi']:.3f}/{result['top2vec']['ami']:.3f}; dense-cluster documents only: "
        f"{result['top2vec_dense_only']['nmi']:.3f}/{result['top2vec_dense_only']['ami']:.3f}\n"
    )
    print(word_table(words[:10], sizes[:10].tolist(), [t["newsgroup"] for t in result["largest_topics"]]))
    print('\n"the", "and", "of" as [topic, rank] among the 50 words of every topic:', end=" ")
    print(json.dumps(result["stop_words"]["top50"]["common_words_at_topic_rank"]))
    top10 = result["stop_words"]["top10"]
    print(f"English stop words among the top 10 words: {top10['topics_with_a_stop_word_in_top']} of {k} topics:")
    print(json.dumps(top10["stop_words_in_top"]))
    print(f"\n## Reduced to {args.reduce}\n")
    print(word_table(reduced_words, reduced_sizes.tolist(), result["reduced"]["newsgroups"]), flush=True)

    if not args.no_lda:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        vocabulary = list(model.vocabulary_ or [])
        no_stop = [w for w in vocabulary if w not in ENGLISH_STOP_WORDS]
        result["lda"] = {}
        for name, vocab, topics in (
            ("no stop words", vocabulary, k),
            ("English stop words removed", no_stop, k),
            (f"{args.reduce} topics, no stop words", vocabulary, args.reduce),
        ):
            print(f"\n## LDA, {name} ({topics} topics, {len(vocab)} words, {args.lda_iter} passes)\n", flush=True)
            lda_topics, lda_words, seconds = run_lda(documents, vocab, topics, args.seed, args.lda_iter)
            entry = {
                "topics": topics,
                "vocabulary": len(vocab),
                "passes": args.lda_iter,
                "seconds": seconds,
                **scores(truth, lda_topics),
                "largest_topics": [
                    {"size": int((lda_topics == t).sum()), "words": list(lda_words[t])} for t in range(min(10, topics))
                ],
                "stop_words_top10": stop_word_report(lda_words, 10),
                "newsgroups": dominant_groups(truth, lda_topics, groups, range(min(10, topics))),
            }
            result["lda"][name] = entry
            rows.append({"method": f"LDA, {name}", "topics": topics, **scores(truth, lda_topics), "seconds": seconds})
            save(result, rows, started)
            largest = entry["largest_topics"]
            print(f"NMI/AMI {entry['nmi']:.3f}/{entry['ami']:.3f}, fit {seconds:.0f} s\n")
            print(
                word_table(np.asarray([t["words"] for t in largest]), [t["size"] for t in largest], entry["newsgroups"])
            )
            report = entry["stop_words_top10"]
            frequent = dict(list(report["stop_words_in_top"].items())[:10])
            count = report["topics_with_a_stop_word_in_top"]
            print(f"\nEnglish stop words among the top 10 words of {count} of {topics} topics; the most frequent:")
            print(json.dumps(frequent), flush=True)

    print("\n## Summary\n")
    print(table(rows))
    print(f"\ntotal {result['total_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU; wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
