from __future__ import annotations

import base64
import math
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dmlkit.errors import MissingDependencyError
from dmlkit.training.html_report import (
    GALLERY_NEIGHBORS,
    GALLERY_QUERIES,
    _moving_average,
    _smoothing_window,
    write_html_report,
)

pytest.importorskip("matplotlib", reason="the report draws its figures with matplotlib")

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "wbr", "source"}
SECTIONS = ["summary", "training-curves", "metric-curves", "embedding-map", "neighbour-gallery"]


class Page(HTMLParser):
    """Checks that every element is closed in order, and collects sections, images and gallery tiles."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = ""
        self.sections: list[str] = []
        self.images: list[dict[str, str]] = []
        self.rows: list[dict[str, Any]] = []  # gallery rows: query and tiles (classes, caption text)
        self.tags: dict[str, int] = {}
        self.text: list[str] = []
        self._tile: dict[str, Any] | None = None
        self._section = ""
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed {self.stack}")

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self._section = a.get("id", "")
            self.sections.append(self._section)
        if tag == "br" and self._tile is not None:
            self._tile["caption"] += "\n"
        if tag == "img":
            self.images.append({**a, "section": self._section})
        if tag == "div" and "gallery-row" in a.get("class", ""):
            self.rows.append({"query": int(a["data-query"]), "tiles": []})
        if tag == "figure":
            self._tile = {"classes": a.get("class", "").split(), "index": int(a["data-index"]), "caption": ""}
            self.rows[-1]["tiles"].append(self._tile)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "figure":
            self._tile = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._tile is not None:
            self._tile["caption"] += data


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.errors == []
    assert page.doctype.lower() == "doctype html"
    assert page.tags["html"] == page.tags["head"] == page.tags["body"] == page.tags["title"] == 1
    assert "http://" not in text and "https://" not in text
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
        assert image["alt"]
    return text, page


@pytest.fixture(autouse=True)
def no_umap(monkeypatch: pytest.MonkeyPatch) -> None:
    """t-SNE for every test unless a test puts its own ``umap`` back: fast, and the same wherever it runs."""
    monkeypatch.setitem(sys.modules, "umap", None)


def train_records(n: int = 60) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [
        {
            "step": i,
            "epoch": i // 20,
            "loss": 2.0 * math.exp(-i / 30) + 0.1 * float(rng.random()),
            "metric_loss": math.exp(-i / 20),
            "classifier_loss": 0.5 * math.exp(-i / 40),
            "lr": 0.01 * 0.5 ** (i // 20),
            "samples_per_sec": 1000.0 + i,
            "seconds": 0.1 * i,
        }
        for i in range(n)
    ]


def eval_records() -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "split": split,
            "precision_at_1": 0.5 + 0.1 * e,
            "r_precision": 0.3 + 0.05 * e,
            "mean_average_precision_at_r": 0.2 + 0.04 * e,
        }
        for e in range(3)
        for split in ("train", "test")
    ]


def clusters(n_per_class: int = 12, classes: int = 4, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 4
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=generator) * 0.5, labels


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "umap", None)
        embeddings, labels = clusters()
        images = torch.rand(len(labels), 3, 10, 10, generator=torch.Generator().manual_seed(1))
        return write_html_report(
            tmp_path_factory.mktemp("report") / "run" / "report.html",
            train_records=train_records(),
            eval_records=eval_records(),
            embeddings=embeddings,
            labels=labels[:, None],  # the testers' (N, 1) labels
            images=images,
            class_names=["<zero>", "one & two", '"three"', "four"],
            title="Run <b>&</b>",
            summary={"precision_at_1": 0.8125, "config": {"loss": "<triplet>", "lr": 1e-4}, "versions": {"torch": "2"}},
        )


def test_the_full_report_is_valid_html_with_every_section(full_report: Path) -> None:
    text, page = parse(full_report)
    assert page.sections == SECTIONS
    assert len([i for i in page.images if i["section"] == "neighbour-gallery"]) == GALLERY_QUERIES * (
        1 + GALLERY_NEIGHBORS
    )
    assert len(page.rows) == GALLERY_QUERIES
    assert all(len(row["tiles"]) == 1 + GALLERY_NEIGHBORS for row in page.rows)
    # Loss chart, other-values chart, metric charts, map.
    assert [i["section"] for i in page.images if "tile" not in i["class"]] == [
        "training-curves",
        "training-curves",
        "metric-curves",
        "embedding-map",
    ]


def test_strings_are_escaped(full_report: Path) -> None:
    text, page = parse(full_report)
    assert "<b>" not in text and "<zero>" not in text and "<triplet>" not in text
    assert "<title>Run &lt;b&gt;&amp;&lt;/b&gt;</title>" in text
    joined = "".join(page.text)
    assert "Run <b>&</b>" in joined
    assert "config.loss" in joined and "<triplet>" in joined and "0.8125" in joined and "versions.torch" in joined
    assert any("one & two" in tile["caption"] for row in page.rows for tile in row["tiles"])


def test_the_curves_plot_losses_and_other_values_but_not_rates(full_report: Path) -> None:
    _, page = parse(full_report)
    loss, other = (i["alt"] for i in page.images if i["section"] == "training-curves")
    assert loss == "Loss curves: loss, metric_loss, classifier_loss"
    assert other == "Other training values: lr"
    metrics = next(i["alt"] for i in page.images if i["section"] == "metric-curves")
    assert metrics == "Metric curves: precision_at_1, r_precision, mean_average_precision_at_r for splits train, test"
    assert "6 lines: one per (split, metric)" in "".join(page.text)


def _oracle_neighbours(points: list[list[float]], query: int, k: int) -> list[int]:
    distances = []
    for index, point in enumerate(points):
        if index != query:
            distances.append((math.sqrt(sum((a - b) ** 2 for a, b in zip(point, points[query], strict=True))), index))
    return [index for _, index in sorted(distances)[:k]]


def test_wrong_neighbours_are_marked(tmp_path: Path) -> None:
    # Points on a curve with all pairwise distances distinct; labels interleave so some neighbours are wrong.
    n = 14
    points = [[float(i) ** 1.3, math.sin(i)] for i in range(n)]
    labels = [0, 0, 0, 1, 1, 0, 1, 1, 1, 2, 2, 1, 2, 2]
    images = torch.zeros(n, 5, 5)
    path = write_html_report(
        tmp_path / "r.html",
        train_records=[],
        eval_records=[],
        embeddings=torch.tensor(points),
        labels=torch.tensor(labels),
        images=images,
        seed=3,
    )
    _, page = parse(path)
    assert len(page.rows) == GALLERY_QUERIES
    wrong_seen = right_seen = 0
    for row in page.rows:
        query = row["query"]
        query_tile, *neighbour_tiles = row["tiles"]
        assert "query" in query_tile["classes"] and f"#{query}" in query_tile["caption"]
        expected = _oracle_neighbours(points, query, GALLERY_NEIGHBORS)
        assert [tile["index"] for tile in neighbour_tiles] == expected
        assert [tile["caption"].split("\n")[0] for tile in neighbour_tiles] == [
            f"{rank}. #{index}" for rank, index in enumerate(expected, start=1)
        ]
        for index, tile in zip(expected, neighbour_tiles, strict=True):
            wrong = labels[index] != labels[query]
            assert ("wrong" in tile["classes"]) == wrong
            assert ("right" in tile["classes"]) == (not wrong)
            assert ("wrong class" in tile["caption"]) == wrong
            wrong_seen += wrong
            right_seen += not wrong
    assert wrong_seen > 0 and right_seen > 0
    assert f"{wrong_seen} of {GALLERY_QUERIES * GALLERY_NEIGHBORS} neighbours have another class" in "".join(page.text)


def test_the_gallery_shrinks_to_small_data(tmp_path: Path) -> None:
    path = write_html_report(
        tmp_path / "r.html",
        train_records=[],
        eval_records=[],
        embeddings=torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]),
        labels=[0, 1, 0],
        images=np.full((3, 4, 4), 0.5),
    )
    _, page = parse(path)
    assert page.sections == ["neighbour-gallery"]  # three points are too few for a map
    assert [row["query"] for row in page.rows] == [0, 1, 2]
    assert [len(row["tiles"]) for row in page.rows] == [3, 3, 3]


def test_sections_are_left_out_without_their_inputs(tmp_path: Path) -> None:
    embeddings, labels = clusters(n_per_class=6, classes=3)
    path = write_html_report(
        tmp_path / "no_images.html",
        train_records=train_records(10),
        eval_records=[],
        embeddings=embeddings,
        labels=labels,
    )
    _, page = parse(path)
    assert page.sections == ["training-curves", "embedding-map"]
    assert len(page.images) == 3
    path = write_html_report(tmp_path / "eval_only.html", train_records=[], eval_records=eval_records())
    assert parse(path)[1].sections == ["metric-curves"]
    path = write_html_report(
        tmp_path / "empty.html", train_records=[], eval_records=[], images=torch.rand(4, 1, 3, 3), summary={}
    )
    text, page = parse(path)
    assert page.sections == [] and page.images == []
    assert "<h1>dmlkit run</h1>" in text


def test_tsne_is_the_fallback_when_umap_is_missing(full_report: Path) -> None:
    text, page = parse(full_report)
    alt = next(i["alt"] for i in page.images if i["section"] == "embedding-map")
    assert alt == "2-D map of all 48 embeddings by t-SNE (cosine metric, perplexity 15.6667), coloured by class"


def test_umap_is_used_when_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class FakeUMAP:
        def __init__(self, **kwargs: Any) -> None:
            calls.append(kwargs)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            calls.append({"shape": x.shape})
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    embeddings, labels = clusters(n_per_class=5, classes=4, dim=6)
    path = write_html_report(
        tmp_path / "r.html", train_records=[], eval_records=[], embeddings=embeddings, labels=labels, seed=7
    )
    assert calls == [{"n_components": 2, "n_neighbors": 15, "metric": "cosine", "random_state": 7}, {"shape": (20, 6)}]
    assert "by UMAP (cosine metric)" in path.read_text()


def test_the_map_subsamples_with_the_seed(tmp_path: Path) -> None:
    # 2-D embeddings are drawn as they are, so this large case needs no projection.
    embeddings = torch.randn(2100, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(2100) % 25  # more classes than the legend lists
    kwargs: dict[str, Any] = dict(train_records=[], eval_records=[], embeddings=embeddings, labels=labels)
    first = write_html_report(tmp_path / "a.html", seed=1, **kwargs).read_bytes()
    again = write_html_report(tmp_path / "b.html", seed=1, **kwargs).read_bytes()
    other = write_html_report(tmp_path / "c.html", seed=2, **kwargs).read_bytes()
    assert first == again
    assert first != other
    assert "2000 of 2100 embeddings mapped to 2-D by the embeddings themselves (2-D)" in first.decode()


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "dmlkit\[report\]"$'):
        write_html_report(tmp_path / "r.html", train_records=[], eval_records=[])
    assert not (tmp_path / "r.html").exists()


def test_inputs_that_do_not_fit_raise_exact_messages(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(
        ValueError,
        match=r"^write_html_report: `labels` must be of shape \(N,\) or \(N, 1\) with N = 3, the number of "
        r"embeddings, got shape \(4,\).$",
    ):
        write_html_report(out, train_records=[], eval_records=[], embeddings=torch.zeros(3, 2), labels=[0, 1, 2, 3])
    with pytest.raises(
        ValueError,
        match=r"^write_html_report: `images` must be of shape \(N, C, H, W\) with C in \{1, 3\}, or \(N, H, W\), "
        r"with N = 3, the number of embeddings, got shape \(3, 2, 4, 4\).$",
    ):
        write_html_report(
            out,
            train_records=[],
            eval_records=[],
            embeddings=torch.zeros(3, 2),
            labels=[0, 1, 2],
            images=torch.zeros(3, 2, 4, 4),
        )
    with pytest.raises(ValueError, match=r"^write_html_report: `embeddings` must be finite, got an array with nan"):
        write_html_report(out, train_records=[], eval_records=[], embeddings=torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(
        ValueError, match=r"^write_html_report: `embeddings` must be a non-empty \(N, D\) array, got shape \(3,\).$"
    ):
        write_html_report(out, train_records=[], eval_records=[], embeddings=torch.zeros(3))
    assert not out.exists()


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _screenshot(browser: str, page: Path, out: Path, profile: Path) -> Path:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # needed when the tests run as root, as in containers
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            "--window-size=1100,3000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH to render the report")
    # Two-class points on a line where two of the queries' neighbours are wrong, so red borders must show.
    n = 12
    embeddings = torch.tensor([[float(i), 0.0] for i in range(n)])
    labels = torch.tensor([0] * 6 + [1] * 6)
    images = torch.linspace(0, 1, 8).repeat(n, 8, 1)
    path = write_html_report(
        tmp_path / "r.html",
        train_records=train_records(30),
        eval_records=[],
        embeddings=embeddings,
        labels=labels,
        images=images,
        summary={"precision_at_1": 0.5},
    )
    shot = _screenshot(browser, path, tmp_path / "shot.png", tmp_path / "profile")
    assert shot.exists()
    try:
        from PIL import Image
    except ImportError:
        assert shot.stat().st_size > 20_000, "the screenshot is too small to hold the page"
        return
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int64)
    assert pixels.shape[:2] == (3000, 1100)
    assert pixels.std() > 20, "the screenshot is blank"
    red = (pixels[..., 0] > 190) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    assert red.sum() > 500, "no wrong-neighbour border is visible"


def test_moving_average_matches_a_plain_loop() -> None:
    values = np.random.default_rng(0).normal(size=37)
    for window in (1, 3, 10, 50):
        expected = [sum(values[max(0, i + 1 - window) : i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(37)]
        np.testing.assert_allclose(_moving_average(values, window), expected, rtol=1e-12)


def test_only_long_zigzagging_series_are_smoothed() -> None:
    rng = np.random.default_rng(0)
    noisy = np.exp(-np.arange(400) / 100) + 0.2 * rng.random(400)
    schedule = 0.1 * 0.5 ** (np.arange(400) // 100)
    cosine = 0.05 * (1 + np.cos(np.pi * np.arange(400) / 400))
    assert _smoothing_window(noisy) == 16  # one point in 25
    assert _smoothing_window(noisy[:49]) == 1  # too short
    assert _smoothing_window(schedule) == 1
    assert _smoothing_window(cosine) == 1
    assert _smoothing_window(np.full(400, 0.5)) == 1
    assert _smoothing_window(np.tile([0.0, 1.0], 100_000)) == 500
