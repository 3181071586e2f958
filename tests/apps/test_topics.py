"""TopicDiscovery (Top2Vec; Angelov, 2020, arXiv:2008.09470) on planted-topic corpora, and its command.

The planted corpus: four vocabularies of 20 made-up words; each topic document draws 40 words, half from its
topic's vocabulary and half from ten shared filler words ("the", "and", ...); a few mixed documents draw from all
vocabularies. Doc2Vec must recover the four topics, and no filler word may be among any topic's words nearest to
its topic vector (the paper's argument for needing no stop-word list).
"""

from __future__ import annotations

import copy
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("umap", reason="TopicDiscovery needs umap-learn")
pytest.importorskip("sklearn.cluster", reason="TopicDiscovery needs scikit-learn's HDBSCAN")
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from dmlkit.apps.topics import (  # noqa: E402
    TopicDiscovery,
    build_vocabulary,
    merge_smallest_topics,
    tokenize,
)
from dmlkit.apps.topics_cli import add_command, read_corpus  # noqa: E402
from dmlkit.errors import CorruptFileError, NotFittedError  # noqa: E402
from dmlkit.training.cli import main  # noqa: E402
from tests.data._shared import shared_folder  # noqa: E402

FILLER = ["the", "and", "of", "to", "is", "in", "it", "that", "was", "for"]
NUM_PLANTED = 4
PER_TOPIC = 40
MIXED = 12
SMALL_DOC2VEC = {"vector_size": 50, "min_count": 2, "sample": 0.0, "epochs": 20, "workers": 1}


def planted_corpus(seed: int = 0) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Documents, their planted topic (-1 for mixed documents) and the planted vocabularies."""
    rng = np.random.default_rng(seed)
    letters = list("bcdfghjklmnpqrstvwxz")
    vocabularies: list[list[str]] = []
    while len(vocabularies) < NUM_PLANTED:
        words = sorted({"".join(rng.choice(letters, 6)) for _ in range(20)})
        vocabularies.append(words)
    docs, labels = [], []
    for topic, words in enumerate(vocabularies):
        for _ in range(PER_TOPIC):
            docs.append(" ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(40)))
            labels.append(topic)
    every = sum(vocabularies, [])
    for _ in range(MIXED):
        docs.append(" ".join(rng.choice(every) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(40)))
        labels.append(-1)
    return docs, np.array(labels), vocabularies


class HashEncoder:
    """A toy sentence encoder: each word has a fixed random 256-d vector; a text is the mean of its words'."""

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            words = tokenize(text)
            vectors = [np.random.default_rng(zlib.crc32(w.encode())).standard_normal(256) for w in words]
            rows.append(np.mean(vectors, axis=0) if vectors else np.zeros(256))
        return np.array(rows)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray, list[list[str]]]:
    return planted_corpus()


@pytest.fixture(scope="module")
def model(corpus: tuple[list[str], np.ndarray, list[list[str]]]) -> TopicDiscovery:
    return TopicDiscovery(**SMALL_DOC2VEC, random_state=0).fit(corpus[0])


@pytest.fixture(scope="module")
def encoder_models(corpus: tuple[list[str], np.ndarray, list[list[str]]]) -> dict[str, TopicDiscovery]:
    return {
        how: TopicDiscovery(HashEncoder(), min_count=2, assignment=how, random_state=0).fit(corpus[0])
        for how in ("cluster", "nearest")
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------- planted topics


def test_doc2vec_recovers_the_planted_topics(
    model: TopicDiscovery, corpus: tuple[list[str], np.ndarray, list[list[str]]]
) -> None:
    _, planted, vocabularies = corpus
    assert model.get_num_topics() == NUM_PLANTED
    topical = planted >= 0
    assert normalized_mutual_info_score(planted[topical], model.labels_[topical]) > 0.95
    words = model.get_topics().words
    matched = set()
    for topic in range(NUM_PLANTED):
        top = set(words[topic, :10])
        owners = [k for k, vocab in enumerate(vocabularies) if top <= set(vocab)]
        assert len(owners) == 1, f"topic {topic}'s top words {sorted(top)} are not from one planted vocabulary"
        matched.add(owners[0])
    assert matched == set(range(NUM_PLANTED))


def test_filler_words_are_never_topic_words(model: TopicDiscovery) -> None:
    # Each planted vocabulary has 20 words: the 20 nearest words of every topic are its own, no filler.
    assert not set(model.get_topics().words[:, :20].ravel()) & set(FILLER)
    assert set(FILLER) <= set(model.vocabulary_ or [])


def test_topics_are_numbered_by_size_and_cover_every_document(model: TopicDiscovery) -> None:
    sizes, ids = model.get_topic_sizes()
    assert ids.tolist() == list(range(NUM_PLANTED))
    assert (np.diff(sizes) <= 0).all()
    assert sizes.tolist() == np.bincount(model.doc_topics(), minlength=NUM_PLANTED).tolist()
    assert sizes.sum() == NUM_PLANTED * PER_TOPIC + MIXED


def test_topic_vectors_are_cluster_centroids_and_words_the_nearest(model: TopicDiscovery) -> None:
    docs, words, clusters = model.document_vectors_, model.word_vectors_, model.cluster_labels_
    assert docs is not None and words is not None and clusters is not None and model.topic_vectors_ is not None
    vocabulary = model.vocabulary_ or []
    for topic in range(model.get_num_topics()):
        members = [docs[i].astype(np.float64) for i in range(len(docs)) if clusters[i] == topic]
        centroid = _unit(np.sum(members, axis=0))
        np.testing.assert_allclose(model.topic_vectors_[topic], centroid, atol=1e-5)
        scored = sorted(
            ((float(np.dot(_unit(words[w].astype(np.float64)), centroid)), vocabulary[w]) for w in range(len(words))),
            reverse=True,
        )
        np.testing.assert_allclose(model.topic_word_scores_[topic, :10], [s for s, _ in scored[:10]], atol=1e-5)
        assert set(model.topic_words_[topic, :5]) == {w for _, w in scored[:5]}


def test_same_seed_same_model(model: TopicDiscovery, corpus: tuple[list[str], np.ndarray, list[list[str]]]) -> None:
    again = TopicDiscovery(**SMALL_DOC2VEC, random_state=0).fit(corpus[0])
    np.testing.assert_array_equal(again.document_vectors_, model.document_vectors_)
    np.testing.assert_array_equal(again.labels_, model.labels_)
    np.testing.assert_array_equal(again.topic_words_, model.topic_words_)


# ---------------------------------------------------------------------- encoder route, assignment


def test_encoder_route_recovers_topics_and_embeds_the_vocabulary(
    encoder_models: dict[str, TopicDiscovery], corpus: tuple[list[str], np.ndarray, list[list[str]]]
) -> None:
    _, planted, _ = corpus
    fitted = encoder_models["cluster"]
    assert fitted.get_num_topics() == NUM_PLANTED
    topical = planted >= 0
    assert normalized_mutual_info_score(planted[topical], fitted.labels_[topical]) > 0.95
    vocabulary = fitted.vocabulary_ or []
    expected = HashEncoder().encode(vocabulary)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.word_vectors_, expected, atol=1e-6)


def test_cluster_assignment_keeps_clusters_and_sends_noise_to_the_nearest_topic(
    encoder_models: dict[str, TopicDiscovery],
) -> None:
    fitted = encoder_models["cluster"]
    clusters, labels = fitted.cluster_labels_, fitted.labels_
    assert clusters is not None and labels is not None and fitted.document_vectors_ is not None
    noise = np.flatnonzero(clusters < 0)
    assert len(noise) >= 1, "the planted corpus should leave at least one noise document"
    np.testing.assert_array_equal(labels[clusters >= 0], clusters[clusters >= 0])
    for i in noise:
        sims = [float(np.dot(fitted.document_vectors_[i], t)) for t in fitted.topic_vectors_]
        assert labels[i] == int(np.argmax(sims))


def test_nearest_assignment_gives_every_document_its_nearest_topic(encoder_models: dict[str, TopicDiscovery]) -> None:
    fitted = encoder_models["nearest"]
    assert fitted.document_vectors_ is not None and fitted.labels_ is not None
    for i, doc in enumerate(fitted.document_vectors_):
        sims = [float(np.dot(doc, t)) for t in fitted.topic_vectors_]
        assert fitted.labels_[i] == int(np.argmax(sims))
    assert (fitted.labels_ != fitted.cluster_labels_).any(), "some documents should change topic (noise at least)"


def test_callable_encoder_and_bad_encoder_output(corpus: tuple[list[str], np.ndarray, list[list[str]]]) -> None:
    docs = corpus[0]
    fitted = TopicDiscovery(HashEncoder().encode, min_count=2, random_state=0).fit(docs)
    assert fitted.get_num_topics() == NUM_PLANTED
    with pytest.raises(ValueError, match=r"`embedding` must be an encoder returning a \(172, d\) array"):
        TopicDiscovery(lambda texts: np.ones((3, 4)), min_count=2).fit(docs)
    with pytest.raises(ValueError, match="an encoder returning finite values"):
        TopicDiscovery(lambda texts: np.full((len(texts), 4), np.nan), min_count=2).fit(docs)


# ---------------------------------------------------------------------- reduction


def _naive_merge(
    vectors: np.ndarray, sizes: list[int], keep: int
) -> tuple[list[list[float]], list[int], list[list[int]]]:
    vecs = [[float(x) / math.sqrt(sum(float(y) ** 2 for y in v)) for x in v] for v in vectors]
    sizes, groups = list(sizes), [[i] for i in range(len(vecs))]
    while len(vecs) > keep:
        small = max(i for i in range(len(sizes)) if sizes[i] == min(sizes))
        best, best_sim = -1, -math.inf
        for j in range(len(vecs)):
            sim = sum(a * b for a, b in zip(vecs[small], vecs[j], strict=True))
            if j != small and sim > best_sim:
                best, best_sim = j, sim
        merged = [sizes[small] * a + sizes[best] * b for a, b in zip(vecs[small], vecs[best], strict=True)]
        norm = math.sqrt(sum(x * x for x in merged))
        vecs[best] = [x / norm for x in merged]
        sizes[best] += sizes[small]
        groups[best] = sorted(groups[best] + groups[small])
        del vecs[small], sizes[small], groups[small]
    return vecs, sizes, groups


@pytest.mark.parametrize("keep", [1, 3, 6, 9])
def test_merge_smallest_topics_matches_a_naive_loop(keep: int) -> None:
    rng = np.random.default_rng(keep)
    vectors = rng.standard_normal((9, 5))
    sizes = rng.integers(1, 6, size=9)  # ties included
    merge = merge_smallest_topics(vectors, sizes, keep)
    vecs, counts, groups = _naive_merge(vectors, sizes.tolist(), keep)
    np.testing.assert_allclose(merge.vectors, vecs, atol=1e-12)
    assert merge.sizes.tolist() == counts and merge.groups == groups


def test_merge_smallest_topics_rejects_bad_input() -> None:
    with pytest.raises(
        ValueError, match=r"merge_smallest_topics: `num_topics` must be an integer >= 1 and <= 2, got 3"
    ):
        merge_smallest_topics(np.eye(2), np.array([1, 1]), 3)
    with pytest.raises(ValueError, match="`topic_vectors` must be a \\(k, d\\) array with one size per row"):
        merge_smallest_topics(np.eye(2), np.array([1, 1, 1]), 1)


def test_hierarchical_reduction(model: TopicDiscovery) -> None:
    original = model.topic_vectors_.copy()  # type: ignore[union-attr]
    hierarchy = model.hierarchical_topic_reduction(2)
    assert model.get_num_topics(reduced=True) == 2 and model.get_num_topics() == NUM_PLANTED
    np.testing.assert_array_equal(model.topic_vectors_, original)
    assert sorted(sum(hierarchy, [])) == list(range(NUM_PLANTED))
    sizes, _ = model.get_topic_sizes(reduced=True)
    assert (np.diff(sizes) <= 0).all()
    labels, reduced = model.doc_topics(), model.doc_topics(reduced=True)
    for topic, group in enumerate(hierarchy):
        np.testing.assert_array_equal(reduced == topic, np.isin(labels, group))
        assert sizes[topic] == sum(int((labels == g).sum()) for g in group)
    merge = merge_smallest_topics(original, model.topic_sizes_, 2)  # type: ignore[arg-type]
    expected = {tuple(g): v for g, v in zip(merge.groups, merge.vectors, strict=True)}
    for topic, group in enumerate(hierarchy):
        np.testing.assert_allclose(model.reduced_topic_vectors_[topic], expected[tuple(group)], atol=1e-6)  # type: ignore[index]
    assert model.get_topics(reduced=True).words.shape == (2, 50)
    # Reducing to the number found changes nothing.
    assert model.hierarchical_topic_reduction(NUM_PLANTED) == [[t] for t in range(NUM_PLANTED)]
    np.testing.assert_array_equal(model.doc_topics(reduced=True), labels)
    with pytest.raises(ValueError, match=r"TopicDiscovery: `num_topics` must be an integer >= 1 and <= 4, got 5\."):
        model.hierarchical_topic_reduction(5)


# ---------------------------------------------------------------------- search


def test_search_documents_by_topic(
    model: TopicDiscovery, corpus: tuple[list[str], np.ndarray, list[list[str]]]
) -> None:
    docs = corpus[0]
    hits = model.search_documents_by_topic(np.int64(1), np.int64(5))  # ids as returned by the other queries
    assert (model.doc_topics()[hits.ids] == 1).all()
    assert hits.documents == [docs[i] for i in hits.ids]
    members = np.flatnonzero(model.doc_topics() == 1)
    scores = sorted((float(np.dot(model.document_vectors_[i], model.topic_vectors_[1])) for i in members), reverse=True)  # type: ignore[index]
    np.testing.assert_allclose(hits.scores, scores[:5], atol=1e-6)
    size = int(model.get_topic_sizes()[0][1])
    with pytest.raises(ValueError, match=rf"`num_docs` must be an integer >= 1 and <= {size}, got {size + 1}\."):
        model.search_documents_by_topic(1, size + 1)
    with pytest.raises(ValueError, match=r"`topic_id` must be an integer >= 0 and <= 3, got 4\."):
        model.search_documents_by_topic(4, 1)


def test_search_topics_by_keywords(
    model: TopicDiscovery, corpus: tuple[list[str], np.ndarray, list[list[str]]]
) -> None:
    vocabularies = corpus[2]
    words = model.get_topics().words
    for planted, vocab in enumerate(vocabularies):
        hits = model.search_topics(vocab[:3], 2)
        best = int(hits.topic_ids[0])
        assert set(words[best, :10]) <= set(vocab), f"planted topic {planted} found topic {best}"
        assert hits.topic_scores[0] > hits.topic_scores[1]
        query = _unit(np.mean([model.word_vectors_[model.vocabulary_.index(w)] for w in vocab[:3]], axis=0))  # type: ignore[index, union-attr]
        np.testing.assert_allclose(hits.topic_scores[0], np.dot(model.topic_vectors_[best], query), atol=1e-6)  # type: ignore[index]
    with pytest.raises(KeyError, match=r"keyword\(s\) not in the vocabulary: 'zzzzqq', 'spaceship'"):
        model.search_topics([vocabularies[0][0], "zzzzqq", "spaceship"], 1)
    with pytest.raises(KeyError, match=r"did you mean 'the'"):
        model.search_topics(["thee"], 1)
    with pytest.raises(TypeError, match=r"`keywords` must be a non-empty list of words, got 'the'\."):
        model.search_topics("the", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`num_topics` must be an integer >= 1 and <= 4, got 0\."):
        model.search_topics(["the"], 0)


# ---------------------------------------------------------------------- files


def test_save_load_round_trip(model: TopicDiscovery, tmp_path: Path) -> None:
    model.hierarchical_topic_reduction(3)
    path = model.save(tmp_path / "topics.npz")
    loaded = TopicDiscovery.load(path)
    for name in [
        "document_vectors_",
        "word_vectors_",
        "umap_embedding_",
        "cluster_labels_",
        "topic_vectors_",
        "topic_words_",
        "topic_word_scores_",
        "topic_sizes_",
        "labels_",
        "reduced_topic_vectors_",
        "reduced_topic_words_",
        "reduced_labels_",
        "reduced_topic_sizes_",
    ]:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name), err_msg=name)
    assert loaded.vocabulary_ == model.vocabulary_ and loaded.documents_ == model.documents_
    assert loaded.topic_hierarchy_ == model.topic_hierarchy_
    assert loaded.timings_ == model.timings_ and set(model.timings_) == {"embedding", "umap", "hdbscan", "topics"}
    assert loaded.min_count == 2 and loaded.epochs == 20 and loaded.random_state == 0
    a, b = model.search_topics(["the", "and"], 3, reduced=True), loaded.search_topics(["the", "and"], 3, reduced=True)
    np.testing.assert_array_equal(a.topic_ids, b.topic_ids)
    np.testing.assert_array_equal(a.topic_scores, b.topic_scores)
    before, after = model.search_documents_by_topic(0, 3, reduced=True), loaded.search_documents_by_topic(0, 3, True)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert before.documents == after.documents


def test_unreduced_model_without_documents_round_trips(
    encoder_models: dict[str, TopicDiscovery], tmp_path: Path
) -> None:
    fitted = copy.copy(encoder_models["nearest"])  # the fixture stays as it is for the other tests
    fitted.keep_documents = False
    fitted.documents_ = None
    loaded = TopicDiscovery.load(fitted.save(tmp_path / "m.npz"))
    assert loaded.embedding == "encoder:HashEncoder" and loaded.assignment == "nearest"
    assert loaded.search_documents_by_topic(0, 2).documents is None
    np.testing.assert_array_equal(
        loaded.search_documents_by_topic(0, 2).ids, fitted.search_documents_by_topic(0, 2).ids
    )
    with pytest.raises(NotFittedError, match="call hierarchical_topic_reduction first"):
        loaded.get_topics(reduced=True)


def test_corrupt_and_foreign_files(model: TopicDiscovery, tmp_path: Path) -> None:
    data = model.save(tmp_path / "good.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="not a readable TopicDiscovery file"):
        TopicDiscovery.load(truncated)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError):
        TopicDiscovery.load(tmp_path / "flipped.npz")
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))
    with pytest.raises(CorruptFileError, match="corrupt TopicDiscovery file"):
        TopicDiscovery.load(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CorruptFileError, match="not a readable TopicDiscovery file"):
        TopicDiscovery.load(tmp_path / "text.npz")
    with np.load(tmp_path / "good.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = bytes(arrays["header"]).decode()
    arrays["header"] = np.frombuffer(header.replace('"version": 1', '"version": 99').encode(), np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(CorruptFileError, match="format version 99, but this dmlkit reads version 1"):
        TopicDiscovery.load(tmp_path / "future.npz")
    arrays["header"] = np.frombuffer(header.replace("dmlkit.TopicDiscovery", "other").encode(), np.uint8)
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(CorruptFileError, match=r"not a TopicDiscovery file \(format 'other'\)"):
        TopicDiscovery.load(tmp_path / "other.npz")
    arrays["header"] = np.frombuffer(header.encode(), np.uint8)
    arrays["labels_"] = arrays["labels_"][:-1]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(CorruptFileError, match="inconsistent labels"):
        TopicDiscovery.load(tmp_path / "short.npz")
    with pytest.raises(FileNotFoundError):
        TopicDiscovery.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------- bad input


def test_bad_corpora(corpus: tuple[list[str], np.ndarray, list[list[str]]]) -> None:
    docs = corpus[0]
    fresh = TopicDiscovery(**SMALL_DOC2VEC)
    with pytest.raises(ValueError, match=r"`documents` must be a non-empty list of strings, got no documents\."):
        fresh.fit([])
    with pytest.raises(TypeError, match=r"`documents` must be a list of strings, got str\."):
        fresh.fit("one document")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`documents` must be a list of strings, got int at index 1\."):
        fresh.fit(["a b", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"`documents` must be at least 30 documents .*, got 29 documents\."):
        fresh.fit(docs[:29])
    with pytest.raises(ValueError, match=r"lower them, got 20 documents\."):
        TopicDiscovery(min_cluster_size=5, umap_n_neighbors=25).fit(docs[:20])
    odd = docs[:40] + ["1234 5678", "qqqqqqqq xxxxxx"]
    with pytest.raises(ValueError, match=r"remove those documents or lower `min_count`, got 2 without any: 40, 41\."):
        fresh.fit(odd)
    with pytest.raises(ValueError, match=r"words occurring at least `min_count`=500 times"):
        TopicDiscovery(min_count=500).fit(docs)


def test_no_dense_cluster_says_what_to_change() -> None:
    rng = np.random.default_rng(0)
    docs = [f"word{chr(97 + i % 26)} filler" for i in range(45)]
    noise_only = TopicDiscovery(
        lambda texts: rng.standard_normal((len(texts), 16)), min_count=1, min_cluster_size=20, random_state=0
    )
    with pytest.raises(
        ValueError, match=r"no dense cluster found among 45 documents .* lower `min_cluster_size` \(now 20\)"
    ):
        noise_only.fit(docs)


@pytest.mark.parametrize(
    ("params", "error", "text"),
    [
        ({"vector_size": 0}, ValueError, r"`vector_size` must be an integer >= 1, got 0\."),
        ({"window": 1.5}, TypeError, r"`window` must be an integer, got 1\.5\."),
        ({"min_count": 0}, ValueError, r"`min_count` must be an integer >= 1, got 0\."),
        ({"sample": -1.0}, ValueError, r"`sample` must be a number >= 0, got -1\.0\."),
        ({"hs": 2}, ValueError, r"`hs` must be an integer >= 0 and <= 1, got 2\."),
        ({"hs": 0, "negative": 0}, ValueError, r"`negative` must be >= 1 when `hs` is 0"),
        ({"epochs": 0}, ValueError, r"`epochs` must be an integer >= 1, got 0\."),
        ({"workers": 0}, ValueError, r"`workers` must be an integer >= 1, got 0\."),
        ({"umap_n_neighbors": 1}, ValueError, r"`umap_n_neighbors` must be an integer >= 2, got 1\."),
        ({"umap_n_components": 0}, ValueError, r"`umap_n_components` must be an integer >= 1, got 0\."),
        ({"min_cluster_size": 1}, ValueError, r"`min_cluster_size` must be an integer >= 2, got 1\."),
        ({"min_samples": 0}, ValueError, r"`min_samples` must be an integer >= 1, got 0\."),
        ({"cluster_selection_method": "EOM"}, ValueError, r"`cluster_selection_method` must be one of 'eom', 'leaf'"),
        ({"assignment": "nearst"}, ValueError, r"`assignment` must be one of 'cluster', 'nearest'.* Did you mean"),
        ({"num_topic_words": 0}, ValueError, r"`num_topic_words` must be an integer >= 1, got 0\."),
        ({"random_state": -1}, ValueError, r"`random_state` must be an integer >= 0 and <= 4294967295, got -1\."),
        ({"embedding": "doc2vc"}, ValueError, r"`embedding` must be 'doc2vec' or an encoder"),
        ({"embedding": 3}, TypeError, r"`embedding` must be 'doc2vec' or an encoder .*, got int\."),
    ],
)
def test_parameters_out_of_range(params: dict, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="TopicDiscovery: " + text):
        TopicDiscovery(**params).fit(["a b"] * 40)


def test_queries_before_fit() -> None:
    fresh = TopicDiscovery()
    for call in (
        fresh.get_num_topics,
        fresh.get_topics,
        fresh.get_topic_sizes,
        lambda: fresh.hierarchical_topic_reduction(2),
        lambda: fresh.search_topics(["a"], 1),
        lambda: fresh.save("never.npz"),
    ):
        with pytest.raises(NotFittedError, match=r"TopicDiscovery is not fitted yet; call fit\(documents\) first\."):
            call()


def test_build_vocabulary_order_and_empty_documents() -> None:
    vocabulary, empty = build_vocabulary([["b", "a", "a", "c"], ["b", "d"], ["e"], []], 2)
    assert vocabulary == ["b", "a"] and empty == [2, 3]
    assert tokenize("Ünïcode wörds, x and 42nd") == ["ünïcode", "wörds", "and", "nd"]


# ---------------------------------------------------------------------- command line


def test_cli_fit_show_search(
    corpus: tuple[list[str], np.ndarray, list[list[str]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, _, vocabularies = corpus
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(docs[:80] + ["", "1234 5678"] + docs[80:]) + "\n", encoding="utf-8")
    out = tmp_path / "model.npz"
    fit = ["topics", "fit", str(text), str(out), "--min-count", "2", "--sample", "0", "--epochs", "20"]
    fit += ["--vector-size", "50", "--reduce", "2", "--seed", "0"]
    assert main(fit, [add_command]) == 2
    assert "remove those documents or lower `min_count`, got 1 without any: 80" in capsys.readouterr().err
    assert main([*fit, "--drop-empty"], [add_command]) == 0
    printed = capsys.readouterr().out
    assert "left out 1 documents" in printed and "172 documents" in printed and "4 topics found" in printed
    assert "reduced to 2 topics" in printed
    assert main(["topics", "show", str(out), "--top", "2", "--words", "5"], [add_command]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "4 topics; the 2 largest:" and len(lines) == 3
    assert lines[1].startswith("topic 0 (") and len(lines[1].split(": ")[1].split()) == 5
    assert main(["topics", "show", str(out), "--reduced"], [add_command]) == 0
    assert capsys.readouterr().out.startswith("2 reduced topics; the 2 largest:")
    assert (
        main(["topics", "search", str(out), "--keywords", *vocabularies[2][:2], "--num-topics", "1"], [add_command])
        == 0
    )
    found = capsys.readouterr().out.strip().split(": ")[1].split()
    assert set(found) <= set(vocabularies[2])
    assert main(["topics", "search", str(out), "--keywords", "nowhere"], [add_command]) == 2
    assert (
        "dmlkit topics: error: TopicDiscovery: keyword(s) not in the vocabulary: 'nowhere'" in capsys.readouterr().err
    )
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["topics", "show", str(tmp_path / "bad.npz")], [add_command]) == 2
    assert "not a readable TopicDiscovery file" in capsys.readouterr().err
    assert main(["topics", "show", str(out), "--top", "0"], [add_command]) == 2
    assert "`--top` must be an integer >= 1, got 0." in capsys.readouterr().err
    assert main(["topics", "fit", str(tmp_path / "nothing"), str(out)], [add_command]) == 2
    assert "is neither '20newsgroups', a folder of .txt files, nor a text file" in capsys.readouterr().err


def test_read_corpus_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second doc", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\ndoc", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored", encoding="utf-8")
    assert read_corpus(str(tmp_path)) == ["first\ndoc", "second doc"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt files in the folder"):
        read_corpus(str(empty))


def test_read_corpus_20newsgroups() -> None:
    shared_folder("20newsgroups")
    texts = read_corpus("20newsgroups", "test")
    assert len(texts) == 7532
