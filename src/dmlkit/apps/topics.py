"""Topic discovery in a joint document and word embedding: Top2Vec (Angelov, 2020, arXiv:2008.09470).

Documents and words are embedded in one space (Doc2Vec DBOW with interleaved skip-gram word training, or any
sentence encoder applied to the documents and to the vocabulary words). The document vectors are reduced to a
few dimensions with UMAP, dense regions are found there with HDBSCAN, and each dense region's centroid in the
original joint space is a *topic vector*. A topic's words are the word vectors nearest to its topic vector.
The number of topics is found, not given.

Why no stop-word list is needed (the paper's argument): a word that appears in every kind of document, such as
"the", is trained against all documents alike and so ends up about equally far from every topic vector; it is
never among the words nearest to any one of them, whereas words specific to a topic sit close to its dense
region of documents.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._validation import Described, check_choice, check_range, message
from ..errors import CorruptFileError, MissingDependencyError, NotFittedError
from ._archive import read_archive, write_archive

__all__ = [
    "Assignment",
    "DocumentHits",
    "TopicDiscovery",
    "TopicHits",
    "TopicMerge",
    "Topics",
    "build_vocabulary",
    "cosine_knn",
    "merge_smallest_topics",
    "tokenize",
]

_OWNER = "TopicDiscovery"
_FORMAT = "dmlkit.TopicDiscovery"
_VERSION = 1
_TOKEN = re.compile(r"[^\W\d_]+")
#: tokens shorter or longer than this are dropped (the limits of gensim's ``simple_preprocess``)
_MIN_TOKEN, _MAX_TOKEN = 2, 15
_DOC2VEC = "doc2vec"
#: learned arrays a saved model holds, always and after a reduction
_ARRAYS = (
    "document_vectors_",
    "word_vectors_",
    "umap_embedding_",
    "cluster_labels_",
    "topic_vectors_",
    "topic_words_",
    "topic_word_scores_",
    "topic_sizes_",
    "labels_",
)
_REDUCED_ARRAYS = (
    "reduced_topic_vectors_",
    "reduced_topic_words_",
    "reduced_topic_word_scores_",
    "reduced_topic_sizes_",
    "reduced_labels_",
)
#: constructor arguments stored in a saved model (``embedding`` and ``assignment`` are stored as strings)
_PARAMS = (
    "vector_size",
    "window",
    "min_count",
    "sample",
    "negative",
    "hs",
    "epochs",
    "workers",
    "umap_n_neighbors",
    "umap_n_components",
    "min_cluster_size",
    "min_samples",
    "cluster_selection_method",
    "num_topic_words",
    "keep_documents",
    "random_state",
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text``: runs of letters, 2 to 15 characters long; no stop-word list.

    Example:
        >>> tokenize("The Space-Shuttle launched in 1981, a day late!")
        ['the', 'space', 'shuttle', 'launched', 'in', 'day', 'late']
    """
    return [t for t in _TOKEN.findall(text.lower()) if _MIN_TOKEN <= len(t) <= _MAX_TOKEN]


def build_vocabulary(tokens: Sequence[Sequence[str]], min_count: int) -> tuple[list[str], list[int]]:
    """The words occurring at least ``min_count`` times, and the indices of the documents with none of them.

    Words come most frequent first, the earlier first occurrence breaking ties.

    Example:
        >>> build_vocabulary([["a", "b", "b"], ["b", "c"], ["a", "d"]], 2)
        (['b', 'a'], [])
        >>> build_vocabulary([["a", "b", "b"], ["c"]], 2)
        (['b'], [1])
    """
    counts = Counter(word for doc in tokens for word in doc)
    vocabulary = [w for w, c in sorted(counts.items(), key=lambda item: -item[1]) if c >= min_count]
    known = set(vocabulary)
    empty = [i for i, doc in enumerate(tokens) if not any(word in known for word in doc)]
    return vocabulary, empty


class Assignment(str, enum.Enum):
    """Which topic each document gets.

    ``CLUSTER``: a document in a dense cluster keeps that cluster's topic; a noise document (HDBSCAN label -1)
    gets the topic whose vector is nearest (cosine). ``NEAREST``: every document gets its nearest topic vector,
    as the Top2Vec library does (a clustered document can then move to another topic).
    """

    CLUSTER = "cluster"
    NEAREST = "nearest"


class Topics(NamedTuple):
    """Topics with their words: ``words[i, j]`` is the ``j``-th nearest word of topic ``topic_ids[i]``."""

    words: np.ndarray
    word_scores: np.ndarray
    topic_ids: np.ndarray


class TopicHits(NamedTuple):
    """Topics matching a query, best first, with their words and the cosine similarity to the query."""

    words: np.ndarray
    word_scores: np.ndarray
    topic_scores: np.ndarray
    topic_ids: np.ndarray


class DocumentHits(NamedTuple):
    """Documents of a topic, nearest to its topic vector first (``documents`` is None when not kept)."""

    documents: list[str] | None
    scores: np.ndarray
    ids: np.ndarray


class TopicMerge(NamedTuple):
    """The result of :func:`merge_smallest_topics`: unit topic vectors, sizes, and the original topics in each."""

    vectors: np.ndarray
    sizes: np.ndarray
    groups: list[list[int]]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def merge_smallest_topics(topic_vectors: np.ndarray, sizes: np.ndarray, num_topics: int) -> TopicMerge:
    """Top2Vec's hierarchical topic reduction: merge the smallest topic into its most similar topic, repeatedly.

    At each step the smallest topic (the last one among equally small topics) is merged into the topic whose
    vector has the highest cosine similarity with its own; the merged vector is the size-weighted mean of the two
    unit topic vectors, scaled to unit length, and the merged size is the sum of the two sizes. The merged topic
    takes the place of the one merged into. Steps repeat until ``num_topics`` topics remain.

    Args:
        topic_vectors: (k, d) topic vectors (any length; they are scaled to unit length first).
        sizes: (k,) number of documents of each topic, all > 0.
        num_topics: how many topics to keep, ``1 <= num_topics <= k``.

    Returns:
        The remaining topics in their merge order (not sorted by size): unit vectors, sizes, and for each the
        sorted list of original topic indices it holds.

    Example:
        >>> vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> merge_smallest_topics(vectors, np.array([5, 1, 4]), 2).groups
        [[0, 1], [2]]
    """
    vectors = np.asarray(topic_vectors, dtype=np.float64)
    counts = np.asarray(sizes, dtype=np.int64)
    if vectors.ndim != 2 or counts.shape != (vectors.shape[0],):
        rule = "a (k, d) array with one size per row"
        raise ValueError(message("merge_smallest_topics", "topic_vectors", rule, Described(f"{vectors.shape}")))
    check_range("merge_smallest_topics", "num_topics", num_topics, 1, vectors.shape[0], integer=True)
    vectors = _unit_rows(vectors)
    counts = counts.copy()
    groups = [[i] for i in range(vectors.shape[0])]
    while len(groups) > num_topics:
        smallest = int(np.flatnonzero(counts == counts.min())[-1])
        similarity = vectors @ vectors[smallest]
        similarity[smallest] = -np.inf
        target = int(np.argmax(similarity))
        merged = counts[smallest] * vectors[smallest] + counts[target] * vectors[target]
        vectors[target] = merged / np.linalg.norm(merged)
        counts[target] += counts[smallest]
        groups[target] = sorted(groups[target] + groups[smallest])
        keep = np.arange(len(groups)) != smallest
        vectors, counts = vectors[keep], counts[keep]
        del groups[smallest]
    return TopicMerge(vectors, counts, groups)


def cosine_knn(unit_vectors: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours by cosine distance ``1 - cos`` of unit rows, each row's own index first.

    UMAP's neighbour graph, computed exactly here (in blocks of ``chunk`` rows): UMAP itself finds it exactly only
    below 4096 points, with numba code whose compilation costs more than the search on small corpora.

    Returns:
        ``(indices, distances)``, both (n, min(k, n)), nearest first; distances are clipped at 0.

    Example:
        >>> indices, distances = cosine_knn(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), 2)
        >>> indices.tolist(), distances.astype(float).round(2).tolist()
        ([[0, 1], [1, 0], [2, 1]], [[0.0, 0.2], [0.0, 0.2], [0.0, 0.4]])
    """
    n = unit_vectors.shape[0]
    k = min(k, n)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        block = 1.0 - unit_vectors[rows] @ unit_vectors.T
        block[np.arange(len(rows)), rows] = -np.inf  # a point is its own nearest neighbour, ties or not
        nearest = np.argpartition(block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(rows), 1))
        values = np.take_along_axis(block, nearest, axis=1)
        order = np.lexsort((nearest, values), axis=1)
        indices[rows] = np.take_along_axis(nearest, order, axis=1)
        distances[rows] = np.maximum(np.take_along_axis(values, order, axis=1), 0.0)
    return indices, distances


def _nearest_words(topic_vectors: np.ndarray, word_vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``count`` words nearest to each (unit) topic vector."""
    scores = topic_vectors @ word_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
    return order, np.take_along_axis(scores, order, axis=1)


def _index(value: Any) -> Any:
    """NumPy integers (as in returned ``topic_ids``) as Python ints; anything else unchanged, for the checks."""
    return int(value) if isinstance(value, np.integer) else value


def _shape(array: np.ndarray | None) -> tuple[int, ...]:
    return () if array is None else tuple(np.shape(array))


def _import_optional(module: str, package: str, feature: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, "topics", feature) from None


class TopicDiscovery:
    """Topics found as dense clusters of documents in a joint document-word embedding (Top2Vec; Angelov, 2020,
    arXiv:2008.09470).

    ``fit`` embeds the documents and the vocabulary words in one space, reduces the document vectors to
    ``umap_n_components`` dimensions with UMAP (cosine metric), finds dense clusters there with HDBSCAN
    (Euclidean), and takes the centroid of each cluster's unit document vectors in the original space as the
    topic vector (noise documents, HDBSCAN label -1, are left out of the centroids). Topic words are the
    vocabulary words whose vectors are nearest (cosine) to the topic vector. Every document gets a topic (see
    :class:`Assignment`); topics are numbered by size, largest first.

    The default embedding is the paper's: gensim Doc2Vec in the distributed bag-of-words mode with skip-gram word
    training interleaved (``dm=0, dbow_words=1``), hierarchical softmax, window 15, sub-sampling ``1e-5``, 300
    dimensions, 40 epochs, words kept from 50 occurrences. ``embedding`` may instead be a sentence encoder: an
    object with ``encode(list[str]) -> (n, d) array`` (e.g. a sentence-transformers model) or such a callable;
    it embeds the documents and, for the topic words, each vocabulary word on its own.

    Documents are tokenised by :func:`tokenize` (lower-case letter runs, no stop-word list); the vocabulary is the
    words occurring at least ``min_count`` times in the corpus, and every document must contain one of them.
    With ``random_state`` set and ``workers=1`` a fit is reproducible (gensim with several workers is not).

    Choices the paper leaves open, and differences from the Top2Vec library: document and word vectors are
    scaled to unit length before anything else (topic vectors are centroids of unit document vectors, scaled to
    unit length); UMAP gets the exact 15 nearest neighbours by cosine distance (:func:`cosine_knn`) instead of
    computing them itself (approximately, with NN-descent, from 4096 documents); clustered documents keep their
    cluster's topic unless ``assignment="nearest"``; topics are not de-duplicated after clustering; the
    hierarchical reduction follows the merges for the documents instead of re-assigning them at every step.

    Args:
        embedding: ``"doc2vec"`` or an encoder (see above).
        vector_size: Doc2Vec dimensions, ``>= 1``.
        window: Doc2Vec skip-gram window, ``>= 1``.
        min_count: a word is in the vocabulary from this many occurrences, ``>= 1``.
        sample: Doc2Vec sub-sampling threshold of frequent words, ``>= 0`` (0: none; on a small corpus ``1e-5``
            drops nearly every word, so use 0 there).
        negative: Doc2Vec negative samples, ``>= 0`` (0 with ``hs=1``: hierarchical softmax only).
        hs: 1 for hierarchical softmax, 0 for negative sampling (then ``negative`` must be ``>= 1``).
        epochs: Doc2Vec training epochs, ``>= 1``.
        workers: Doc2Vec worker threads, ``>= 1``.
        umap_n_neighbors: UMAP neighbourhood size, ``>= 2``.
        umap_n_components: UMAP output dimensions, ``>= 1``.
        min_cluster_size: HDBSCAN smallest cluster, ``>= 2``.
        min_samples: HDBSCAN core-point neighbourhood (None: ``min_cluster_size``), ``>= 1``.
        cluster_selection_method: HDBSCAN's ``"eom"`` (excess of mass) or ``"leaf"``.
        assignment: ``"cluster"`` or ``"nearest"`` (see :class:`Assignment`).
        num_topic_words: words kept per topic, ``>= 1`` (all words when the vocabulary is smaller).
        keep_documents: keep the texts, so that searches return them (and :meth:`save` stores them).
        random_state: seed of Doc2Vec and UMAP (None: not reproducible).

    Attributes:
        vocabulary_: the vocabulary words, most frequent first (see :func:`build_vocabulary`).
        document_vectors_: (n, d) unit document vectors; ``word_vectors_``: (V, d) unit word vectors.
        umap_embedding_: (n, umap_n_components) UMAP output; ``cluster_labels_``: HDBSCAN's labels there, as topic
            ids (-1: noise).
        topic_vectors_: (k, d) unit topic vectors; ``topic_words_``, ``topic_word_scores_``: (k, W);
            ``topic_sizes_``: (k,) documents per topic; ``labels_``: (n,) topic of each document.
        timings_: seconds of the fit's steps: ``embedding`` (Doc2Vec or the encoder), ``umap`` (neighbours and
            UMAP), ``hdbscan``, ``topics`` (centroids, assignment, words).
        reduced_*_, topic_hierarchy_: the same after :meth:`hierarchical_topic_reduction` (None before).

    Example:
        >>> import numpy as np
        >>> words = [["red", "green", "blue"], ["cat", "dog", "cow"]]
        >>> def encoder(texts):  # a toy encoder: counts of the words of each planted vocabulary
        ...     return np.array([[sum(t.split().count(w) for w in ws) + 0.1 for ws in words] for t in texts])
        >>> docs = [" ".join(words[i % 2] * 3) + f" the filler{i % 5}" for i in range(60)]
        >>> model = TopicDiscovery(encoder, min_count=2, min_cluster_size=10, random_state=0).fit(docs)
        >>> model.get_num_topics()
        2
    """

    def __init__(
        self,
        embedding: str | Any = _DOC2VEC,
        *,
        vector_size: int = 300,
        window: int = 15,
        min_count: int = 50,
        sample: float = 1e-5,
        negative: int = 0,
        hs: int = 1,
        epochs: int = 40,
        workers: int = 1,
        umap_n_neighbors: int = 15,
        umap_n_components: int = 5,
        min_cluster_size: int = 15,
        min_samples: int | None = None,
        cluster_selection_method: str = "eom",
        assignment: str | Assignment = Assignment.CLUSTER,
        num_topic_words: int = 50,
        keep_documents: bool = True,
        random_state: int | None = None,
    ) -> None:
        self.embedding = embedding
        self.vector_size = vector_size
        self.window = window
        self.min_count = min_count
        self.sample = sample
        self.negative = negative
        self.hs = hs
        self.epochs = epochs
        self.workers = workers
        self.umap_n_neighbors = umap_n_neighbors
        self.umap_n_components = umap_n_components
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.assignment = assignment
        self.num_topic_words = num_topic_words
        self.keep_documents = keep_documents
        self.random_state = random_state
        self.documents_: list[str] | None = None
        self.vocabulary_: list[str] | None = None
        self.document_vectors_: np.ndarray | None = None
        self.word_vectors_: np.ndarray | None = None
        self.umap_embedding_: np.ndarray | None = None
        self.cluster_labels_: np.ndarray | None = None
        self.topic_vectors_: np.ndarray | None = None
        self.topic_words_: np.ndarray | None = None
        self.topic_word_scores_: np.ndarray | None = None
        self.topic_sizes_: np.ndarray | None = None
        self.labels_: np.ndarray | None = None
        self.timings_: dict[str, float] = {}
        self._clear_reduction()

    def _clear_reduction(self) -> None:
        self.reduced_topic_vectors_: np.ndarray | None = None
        self.reduced_topic_words_: np.ndarray | None = None
        self.reduced_topic_word_scores_: np.ndarray | None = None
        self.reduced_topic_sizes_: np.ndarray | None = None
        self.reduced_labels_: np.ndarray | None = None
        self.topic_hierarchy_: list[list[int]] | None = None

    # ------------------------------------------------------------------ fitting

    def _check_params(self) -> Assignment:
        check_range(_OWNER, "vector_size", self.vector_size, 1, integer=True)
        check_range(_OWNER, "window", self.window, 1, integer=True)
        check_range(_OWNER, "min_count", self.min_count, 1, integer=True)
        check_range(_OWNER, "sample", self.sample, 0)
        check_range(_OWNER, "negative", self.negative, 0, integer=True)
        check_range(_OWNER, "hs", self.hs, 0, 1, integer=True)
        if self.hs == 0 and self.negative == 0:
            raise ValueError(message(_OWNER, "negative", ">= 1 when `hs` is 0 (else nothing is trained)", 0))
        check_range(_OWNER, "epochs", self.epochs, 1, integer=True)
        check_range(_OWNER, "workers", self.workers, 1, integer=True)
        check_range(_OWNER, "umap_n_neighbors", self.umap_n_neighbors, 2, integer=True)
        check_range(_OWNER, "umap_n_components", self.umap_n_components, 1, integer=True)
        check_range(_OWNER, "min_cluster_size", self.min_cluster_size, 2, integer=True)
        if self.min_samples is not None:
            check_range(_OWNER, "min_samples", self.min_samples, 1, integer=True)
        if self.cluster_selection_method not in ("eom", "leaf"):
            rule = "one of 'eom', 'leaf'"
            raise ValueError(message(_OWNER, "cluster_selection_method", rule, self.cluster_selection_method))
        check_range(_OWNER, "num_topic_words", self.num_topic_words, 1, integer=True)
        if self.random_state is not None:
            check_range(_OWNER, "random_state", self.random_state, 0, 2**32 - 1, integer=True)
        if isinstance(self.embedding, str):
            if self.embedding != _DOC2VEC:
                rule = "'doc2vec' or an encoder (an object with encode(list[str]) or a callable)"
                raise ValueError(message(_OWNER, "embedding", rule, self.embedding))
        elif not (callable(getattr(self.embedding, "encode", None)) or callable(self.embedding)):
            rule = "'doc2vec' or an encoder (an object with encode(list[str]) or a callable)"
            raise TypeError(message(_OWNER, "embedding", rule, Described(type(self.embedding).__name__)))
        return check_choice(_OWNER, "assignment", self.assignment, Assignment)

    def _check_documents(self, documents: Any) -> list[str]:
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
            raise TypeError(message(_OWNER, "documents", "a list of strings", Described(type(documents).__name__)))
        for i, doc in enumerate(documents):
            if not isinstance(doc, str):
                rule = "a list of strings"
                raise TypeError(message(_OWNER, "documents", rule, Described(f"{type(doc).__name__} at index {i}")))
        if not documents:
            raise ValueError(message(_OWNER, "documents", "a non-empty list of strings", Described("no documents")))
        needed = max(self.umap_n_neighbors + 1, 2 * self.min_cluster_size, self.umap_n_components + 2)
        if len(documents) < needed:
            rule = (
                f"at least {needed} documents (more than `umap_n_neighbors`={self.umap_n_neighbors} and twice "
                f"`min_cluster_size`={self.min_cluster_size}); give more documents or lower them"
            )
            raise ValueError(message(_OWNER, "documents", rule, Described(f"{len(documents)} documents")))
        return list(documents)

    def _vocabulary(self, tokens: list[list[str]]) -> list[str]:
        vocabulary, empty = build_vocabulary(tokens, self.min_count)
        if not vocabulary:
            rule = f"a corpus with words occurring at least `min_count`={self.min_count} times; lower `min_count`"
            raise ValueError(message(_OWNER, "documents", rule, Described("no such word")))
        if empty:
            shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
            rule = (
                f"documents with at least one vocabulary word (a word occurring >= `min_count`={self.min_count} "
                "times); remove those documents or lower `min_count`"
            )
            raise ValueError(message(_OWNER, "documents", rule, Described(f"{len(empty)} without any: {shown}")))
        return vocabulary

    def _doc2vec(self, tokens: list[list[str]], vocabulary: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
        doc2vec = _import_optional("gensim.models.doc2vec", "gensim", "TopicDiscovery(embedding='doc2vec')")
        corpus = [doc2vec.TaggedDocument(doc, [i]) for i, doc in enumerate(tokens)]
        model = doc2vec.Doc2Vec(
            corpus,
            dm=0,
            dbow_words=1,
            vector_size=self.vector_size,
            window=self.window,
            min_count=self.min_count,
            sample=self.sample,
            negative=self.negative,
            hs=self.hs,
            epochs=self.epochs,
            workers=self.workers,
            seed=seed,
        )
        if set(model.wv.index_to_key) != set(vocabulary):
            raise RuntimeError(f"{_OWNER}: gensim's vocabulary differs from the corpus's words with min_count.")
        rows = [model.wv.key_to_index[word] for word in vocabulary]
        return np.asarray(model.dv.vectors[: len(tokens)], np.float32), np.asarray(model.wv.vectors[rows], np.float32)

    def _encode(self, texts: list[str], what: str) -> np.ndarray:
        encode = getattr(self.embedding, "encode", None)
        encoder: Any = self.embedding
        out = encode(texts) if callable(encode) else encoder(texts)
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        array = np.asarray(out, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != len(texts) or array.shape[1] == 0:
            rule = f"an encoder returning a ({len(texts)}, d) array for {len(texts)} {what}"
            raise ValueError(message(_OWNER, "embedding", rule, Described(f"shape {array.shape}")))
        if not np.isfinite(array).all():
            raise ValueError(message(_OWNER, "embedding", "an encoder returning finite values", Described("NaN/Inf")))
        return array

    def fit(self, documents: Sequence[str]) -> TopicDiscovery:
        """Find the topics of ``documents`` (see the class description); returns ``self``.

        Raises:
            TypeError: ``documents`` is not a list of strings, or a parameter has the wrong type.
            ValueError: an empty corpus, too few documents for UMAP/HDBSCAN, a document without vocabulary words,
                no dense cluster, or a parameter out of range.
        """
        assignment = self._check_params()
        docs = self._check_documents(documents)
        tokens = [tokenize(doc) for doc in docs]
        vocabulary = self._vocabulary(tokens)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        seed = (
            int(self.random_state)
            if self.random_state is not None
            else int(np.random.default_rng().integers(2**31 - 1))
        )
        if isinstance(self.embedding, str):
            doc_vectors, word_vectors = self._doc2vec(tokens, vocabulary, seed)
        else:
            doc_vectors, word_vectors = self._encode(docs, "documents"), self._encode(vocabulary, "words")
            if word_vectors.shape[1] != doc_vectors.shape[1]:
                rule = "an encoder giving documents and words vectors of one size"
                raise ValueError(
                    message(_OWNER, "embedding", rule, Described(f"{doc_vectors.shape[1]} and {word_vectors.shape[1]}"))
                )
        doc_vectors, word_vectors = _unit_rows(doc_vectors), _unit_rows(word_vectors)
        timings["embedding"], clock = time.perf_counter() - clock, time.perf_counter()

        umap = _import_optional("umap", "umap-learn", "TopicDiscovery")
        from sklearn.cluster import HDBSCAN

        knn = cosine_knn(doc_vectors, self.umap_n_neighbors)
        reducer = umap.UMAP(
            n_neighbors=self.umap_n_neighbors,
            n_components=self.umap_n_components,
            metric="cosine",
            random_state=self.random_state,
            n_jobs=1 if self.random_state is not None else -1,
            precomputed_knn=(knn[0], knn[1], None),
        )
        with warnings.catch_warnings():
            # UMAP warns that without its own search index it cannot transform new documents; fit never does.
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
            low = np.asarray(reducer.fit_transform(doc_vectors), dtype=np.float32)
        timings["umap"], clock = time.perf_counter() - clock, time.perf_counter()
        clusters = HDBSCAN(
            min_cluster_size=self.min_cluster_size,
            min_samples=self.min_samples,
            metric="euclidean",
            cluster_selection_method=self.cluster_selection_method,
            copy=True,
        ).fit_predict(low)
        timings["hdbscan"], clock = time.perf_counter() - clock, time.perf_counter()
        if clusters.max() < 0:
            raise ValueError(
                f"{_OWNER}: no dense cluster found among {len(docs)} documents (all are noise); lower "
                f"`min_cluster_size` (now {self.min_cluster_size}) or `min_samples`, or give more documents."
            )
        count = int(clusters.max()) + 1
        dense = clusters >= 0
        members = clusters[dense][None, :] == np.arange(count)[:, None]
        centroids = _unit_rows(members.astype(np.float32) @ doc_vectors[dense])
        labels = self._assign(doc_vectors, centroids, np.where(dense, clusters, -1), assignment)
        # Number topics by size, largest first (the stable sort keeps HDBSCAN's order among equal sizes).
        order = np.argsort(-np.bincount(labels, minlength=count), kind="stable")
        rank = np.empty(count, dtype=np.int64)
        rank[order] = np.arange(count)

        self.documents_ = docs if self.keep_documents else None
        self.vocabulary_ = vocabulary
        self.document_vectors_ = doc_vectors
        self.word_vectors_ = word_vectors
        self.umap_embedding_ = low
        self.cluster_labels_ = np.where(dense, rank[np.maximum(clusters, 0)], -1).astype(np.int64)
        self.topic_vectors_ = centroids[order]
        self.labels_ = rank[labels]
        self.topic_sizes_ = np.bincount(self.labels_, minlength=count).astype(np.int64)
        self.topic_words_, self.topic_word_scores_ = self._words_of(self.topic_vectors_)
        timings["topics"] = time.perf_counter() - clock
        self.timings_ = timings
        self._clear_reduction()
        return self

    def fit_predict(self, documents: Sequence[str]) -> np.ndarray:
        """Fit, then return the topic of each document (:attr:`labels_`)."""
        labels = self.fit(documents).labels_
        assert labels is not None
        return labels.copy()

    @staticmethod
    def _assign(doc_vectors: np.ndarray, topics: np.ndarray, clusters: np.ndarray, how: Assignment) -> np.ndarray:
        nearest = np.argmax(doc_vectors @ topics.T, axis=1)
        if how is Assignment.NEAREST:
            return nearest.astype(np.int64)
        return np.where(clusters >= 0, clusters, nearest).astype(np.int64)

    def _words_of(self, topic_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.word_vectors_ is not None and self.vocabulary_ is not None
        order, scores = _nearest_words(topic_vectors, self.word_vectors_, self.num_topic_words)
        return np.asarray(self.vocabulary_)[order], scores

    # ------------------------------------------------------------------ reduction

    def hierarchical_topic_reduction(self, num_topics: int) -> list[list[int]]:
        """Reduce the topics to ``num_topics`` by repeatedly merging the smallest into its most similar topic.

        The merging is :func:`merge_smallest_topics` (size-weighted means of unit topic vectors). The original
        topics stay as they are; the reduced ones are kept beside them (``reduced_*_`` attributes, and
        ``reduced=True`` in the other methods), numbered by size, largest first, and recomputed from the
        original topics on each call. With ``assignment="cluster"`` a document follows its topic into the merged
        topic; with ``"nearest"`` it gets the nearest reduced topic vector.

        Returns:
            ``topic_hierarchy_``: for each reduced topic, the original topic ids merged into it.

        Raises:
            ValueError: ``num_topics`` is not between 1 and the number of topics found.
        """
        vectors, sizes, labels = self._fitted()
        num_topics = _index(num_topics)
        check_range(_OWNER, "num_topics", num_topics, 1, len(sizes), integer=True)
        merge = merge_smallest_topics(vectors, sizes, num_topics)
        owner = np.empty(len(sizes), dtype=np.int64)
        for reduced, group in enumerate(merge.groups):
            owner[group] = reduced
        merged_vectors = merge.vectors.astype(np.float32)
        reduced_labels = owner[labels]
        if check_choice(_OWNER, "assignment", self.assignment, Assignment) is Assignment.NEAREST:
            assert self.document_vectors_ is not None
            reduced_labels = np.argmax(self.document_vectors_ @ merged_vectors.T, axis=1).astype(np.int64)
        order = np.argsort(-np.bincount(reduced_labels, minlength=num_topics), kind="stable")
        rank = np.empty(num_topics, dtype=np.int64)
        rank[order] = np.arange(num_topics)
        self.reduced_topic_vectors_ = merged_vectors[order]
        self.reduced_labels_ = rank[reduced_labels]
        self.reduced_topic_sizes_ = np.bincount(self.reduced_labels_, minlength=num_topics).astype(np.int64)
        self.reduced_topic_words_, self.reduced_topic_word_scores_ = self._words_of(self.reduced_topic_vectors_)
        self.topic_hierarchy_ = [merge.groups[i] for i in order]
        return [list(group) for group in self.topic_hierarchy_]

    # ------------------------------------------------------------------ queries

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.topic_vectors_ is None or self.topic_sizes_ is None or self.labels_ is None:
            raise NotFittedError(f"{_OWNER} is not fitted yet; call fit(documents) first.")
        return self.topic_vectors_, self.topic_sizes_, self.labels_

    def _state(self, reduced: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Topic vectors, sizes, document labels, words and word scores (original or reduced)."""
        self._fitted()
        if reduced and self.reduced_topic_vectors_ is None:
            raise NotFittedError(f"{_OWNER}: the topics are not reduced; call hierarchical_topic_reduction first.")
        prefix = "reduced_" if reduced else ""
        names = ("topic_vectors_", "topic_sizes_", "labels_", "topic_words_", "topic_word_scores_")
        vectors, sizes, labels, words, scores = (getattr(self, prefix + name) for name in names)
        return vectors, sizes, labels, words, scores

    def get_num_topics(self, reduced: bool = False) -> int:
        """The number of topics found (or kept by the reduction)."""
        return int(self._state(reduced)[0].shape[0])

    def get_topic_sizes(self, reduced: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(sizes, topic_ids)``: the number of documents of each topic, largest first."""
        sizes = self._state(reduced)[1]
        return sizes.copy(), np.arange(len(sizes))

    def get_topics(self, num_topics: int | None = None, reduced: bool = False) -> Topics:
        """The words of the ``num_topics`` largest topics (all when None), nearest first, with cosine scores."""
        _, sizes, _, words, scores = self._state(reduced)
        count = len(sizes) if num_topics is None else _index(num_topics)
        check_range(_OWNER, "num_topics", count, 1, len(sizes), integer=True)
        return Topics(words[:count].copy(), scores[:count].copy(), np.arange(count))

    def doc_topics(self, reduced: bool = False) -> np.ndarray:
        """The topic of each document (a copy of :attr:`labels_` or :attr:`reduced_labels_`)."""
        return self._state(reduced)[2].copy()

    def search_documents_by_topic(self, topic_id: int, num_docs: int, reduced: bool = False) -> DocumentHits:
        """The ``num_docs`` documents of topic ``topic_id`` nearest to its topic vector, with cosine scores.

        Raises:
            ValueError: an unknown topic, or ``num_docs`` outside 1 .. the topic's size.
        """
        vectors, sizes, labels, _, _ = self._state(reduced)
        topic_id, num_docs = _index(topic_id), _index(num_docs)
        check_range(_OWNER, "topic_id", topic_id, 0, len(sizes) - 1, integer=True)
        check_range(_OWNER, "num_docs", num_docs, 1, int(sizes[topic_id]), integer=True)
        assert self.document_vectors_ is not None
        members = np.flatnonzero(labels == topic_id)
        scores = self.document_vectors_[members] @ vectors[topic_id]
        order = np.argsort(-scores, kind="stable")[:num_docs]
        ids = members[order]
        documents = None if self.documents_ is None else [self.documents_[i] for i in ids]
        return DocumentHits(documents, scores[order], ids)

    def keyword_vector(self, keywords: Sequence[str]) -> np.ndarray:
        """The unit mean of the unit word vectors of ``keywords`` (all must be vocabulary words).

        Raises:
            KeyError: keywords not in the vocabulary (named, with close matches).
        """
        self._fitted()
        if isinstance(keywords, str) or not isinstance(keywords, Sequence) or not keywords:
            raise TypeError(message(_OWNER, "keywords", "a non-empty list of words", keywords))
        assert self.vocabulary_ is not None and self.word_vectors_ is not None
        index = {word: i for i, word in enumerate(self.vocabulary_)}
        unknown = [w for w in keywords if w not in index]
        if unknown:
            hints = []
            for word in unknown:
                close = difflib.get_close_matches(str(word), self.vocabulary_, n=3, cutoff=0.6)
                if close:
                    hints.append(f"{word!r}: did you mean {', '.join(repr(c) for c in close)}?")
            raise KeyError(
                f"{_OWNER}: keyword(s) not in the vocabulary: {', '.join(repr(w) for w in unknown)}"
                f" (words with >= {self.min_count} occurrences, lower-case)." + (" " + " ".join(hints) if hints else "")
            )
        mean = self.word_vectors_[[index[w] for w in keywords]].mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def search_topics(self, keywords: Sequence[str], num_topics: int, reduced: bool = False) -> TopicHits:
        """The ``num_topics`` topics whose vectors are nearest (cosine) to the mean of the keywords' word vectors.

        Raises:
            KeyError: keywords not in the vocabulary. ValueError: ``num_topics`` out of range.
        """
        vectors, sizes, _, words, scores = self._state(reduced)
        query = self.keyword_vector(keywords)
        num_topics = _index(num_topics)
        check_range(_OWNER, "num_topics", num_topics, 1, len(sizes), integer=True)
        similarity = vectors @ query
        ids = np.argsort(-similarity, kind="stable")[:num_topics]
        return TopicHits(words[ids].copy(), scores[ids].copy(), similarity[ids], ids)

    # ------------------------------------------------------------------ files

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {name: getattr(self, name) for name in _PARAMS}
        params["assignment"] = check_choice(_OWNER, "assignment", self.assignment, Assignment).value
        params["embedding"] = (
            self.embedding if isinstance(self.embedding, str) else f"encoder:{type(self.embedding).__name__}"
        )
        return params

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model (vectors, vocabulary, topics, reduction, documents if kept) to one file, atomically.

        The file is a NumPy ``.npz`` archive (no pickled objects) with a format name and version; an encoder is
        not stored (only its type name), nor is the gensim model (all its vectors are).

        Example:
            >>> import tempfile, os, numpy as np
            >>> words = [["red", "green", "blue"], ["cat", "dog", "cow"]]
            >>> def encoder(texts):
            ...     return np.array([[sum(t.split().count(w) for w in ws) + 0.1 for ws in words] for t in texts])
            >>> docs = [" ".join(words[i % 2] * 3) for i in range(40)]
            >>> model = TopicDiscovery(encoder, min_count=2, min_cluster_size=10, random_state=0).fit(docs)
            >>> file = os.path.join(tempfile.mkdtemp(), "topics.npz")
            >>> _ = model.save(file)
            >>> TopicDiscovery.load(file).get_topics(1).words[0, :3].tolist()
            ['red', 'green', 'blue']
        """
        self._fitted()
        arrays: dict[str, np.ndarray] = {}
        reduced = self.reduced_topic_vectors_ is not None
        for name in _ARRAYS + (_REDUCED_ARRAYS if reduced else ()):
            arrays[name] = np.asarray(getattr(self, name))
        assert self.vocabulary_ is not None
        arrays["vocabulary_"] = np.asarray(self.vocabulary_, dtype=str)
        if self.documents_ is not None:
            encoded = [doc.encode("utf-8", "surrogatepass") for doc in self.documents_]
            arrays["documents_offsets"] = np.cumsum([0] + [len(b) for b in encoded]).astype(np.int64)
            arrays["documents_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        header = {
            "params": self._params(),
            "reduced": reduced,
            "documents": self.documents_ is not None,
            "topic_hierarchy": self.topic_hierarchy_,
            "timings": self.timings_,
        }
        return write_archive(path, _FORMAT, _VERSION, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TopicDiscovery:
        """Read a model written by :meth:`save` (see its example).

        A model fitted with an encoder loads with ``embedding`` set to the string ``"encoder:<type name>"``; set
        ``model.embedding`` to the encoder again before refitting it.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: a truncated or corrupt file, another kind of file, or another format version.
        """
        file = Path(path)
        header, arrays = read_archive(file, _FORMAT, _VERSION, f"{_OWNER} file")
        try:
            model = cls(**header["params"])
            model._restore(arrays, header)
        except (KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{file}: corrupt {_OWNER} file ({type(exc).__name__}: {exc}).") from None
        return model

    def _restore(self, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> None:
        self.vocabulary_ = [str(w) for w in arrays["vocabulary_"]]
        for name in _ARRAYS + (_REDUCED_ARRAYS if header["reduced"] else ()):
            setattr(self, name, arrays[name])
        if header["reduced"]:
            self.topic_hierarchy_ = [[int(i) for i in group] for group in header["topic_hierarchy"]]
        self.timings_ = {str(step): float(seconds) for step, seconds in header.get("timings", {}).items()}
        if header["documents"]:
            offsets, blob = arrays["documents_offsets"], arrays["documents_bytes"].tobytes()
            self.documents_ = [
                blob[int(a) : int(b)].decode("utf-8", "surrogatepass")
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            ]
        self._check_restored()

    def _check_restored(self) -> None:
        """Shapes and labels must agree with each other; a mismatch means a damaged or hand-edited file."""
        docs, words, topics = self.document_vectors_, self.word_vectors_, self.topic_vectors_
        if docs is None or words is None or topics is None or self.vocabulary_ is None:
            raise ValueError("missing arrays")
        if docs.ndim != 2 or words.ndim != 2 or topics.ndim != 2:
            raise ValueError("the vectors are not 2-D arrays")
        n, d, k = docs.shape[0], docs.shape[1], topics.shape[0]
        width = _shape(self.topic_words_)[1:]
        checks = {
            "word vectors": words.shape == (len(self.vocabulary_), d),
            "topic vectors": topics.shape[1] == d and k >= 1,
            "labels": _shape(self.labels_) == (n,) and _shape(self.cluster_labels_) == (n,),
            "topic sizes": _shape(self.topic_sizes_) == (k,),
            "topic words": _shape(self.topic_words_)[:1] == (k,) and _shape(self.topic_word_scores_) == (k, *width),
            "documents": self.documents_ is None or len(self.documents_) == n,
            "label values": self.labels_ is not None and bool(((self.labels_ >= 0) & (self.labels_ < k)).all()),
        }
        if self.reduced_topic_vectors_ is not None:
            kept = self.reduced_topic_vectors_.shape[0]
            checks["reduced topics"] = _shape(self.reduced_topic_sizes_) == (kept,) and _shape(
                self.reduced_topic_words_
            ) == (kept, *width)
            checks["reduced labels"] = _shape(self.reduced_labels_) == (n,)
            checks["topic hierarchy"] = self.topic_hierarchy_ is not None and len(self.topic_hierarchy_) == kept
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"inconsistent {', '.join(bad)}")
