"""A self-contained HTML report of a training run: summary, loss and metric curves, embedding map, neighbours.

The report is one file with no external reference: figures are PNG images drawn with matplotlib (Agg,
without pyplot, so no global backend is switched) and embedded as base64 ``data:`` URLs, and the styles are
inline, so it opens offline and can be mailed or archived as it is. Its sections, each left out when its
input is missing:

* **Summary**: a table of the ``summary`` mapping (final metrics, configuration, versions; nested mappings
  become dotted keys).
* **Training curves**: every loss-like numeric key of the training records on one chart (raw values faint,
  a trailing moving average over them when a series of 50 or more points zigzags), and each other numeric key (a
  learning rate, a gradient norm) on a small chart of its own. Axis keys (``step``, ``epoch``) and
  rate or time keys (``throughput``, ``samples_per_sec``, ``seconds`` ...) are not plotted.
* **Evaluation metrics**: one chart per metric, one line per split, against the epoch.
* **Embedding map**: a 2-D map of the embeddings coloured by label: UMAP (McInnes, Healy and Melville,
  2018, arXiv:1802.03426) with the cosine metric when ``umap-learn`` is installed, otherwise t-SNE (van der
  Maaten and Hinton, 2008) from scikit-learn, on at most :data:`MAP_MAX_POINTS` points drawn with ``seed``.
* **Nearest neighbours** (image data): :data:`GALLERY_QUERIES` queries drawn with ``seed``, each followed by
  its :data:`GALLERY_NEIGHBORS` nearest other embeddings (exact Euclidean search); a neighbour of another
  label than its query has a red border and says so.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write
from .._validation import Described, message
from ..errors import MissingDependencyError

__all__ = ["GALLERY_NEIGHBORS", "GALLERY_QUERIES", "MAP_MAX_POINTS", "write_html_report"]

#: the most embeddings the 2-D map shows; more are subsampled with the report's seed.
MAP_MAX_POINTS = 2000
#: query rows of the nearest-neighbour gallery.
GALLERY_QUERIES = 8
#: neighbours shown after each query.
GALLERY_NEIGHBORS = 5
#: fewer points than this are mapped with t-SNE even when UMAP is installed (its default uses 15 neighbours).
_UMAP_MIN_POINTS = 16
#: a series is smoothed when it has at least this many points ...
_SMOOTH_MIN_POINTS = 50
#: ... and zigzags: the summed absolute steps exceed this many times its range (1 for a monotone series).
_SMOOTH_MIN_ROUGHNESS = 4.0

_OWNER = "write_html_report"
_AXIS_KEYS = frozenset({"step", "epoch", "iteration", "split"})
_RATE_TOKENS = frozenset(
    {"throughput", "per", "sec", "secs", "second", "seconds", "ms", "time", "elapsed", "eta", "duration", "timestamp"}
)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; color: #1d1d1f; background: #ffffff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d0d0; padding-bottom: 4px; margin-top: 1.6em; }
table.summary { border-collapse: collapse; font-size: 0.92em; }
table.summary th, table.summary td { border: 1px solid #d0d0d0; padding: 3px 10px; text-align: left; }
table.summary td.value { font-family: ui-monospace, Menlo, Consolas, monospace; }
img.figure { max-width: 100%; height: auto; display: block; margin: 8px 0; }
p.caption, p.note { color: #555555; font-size: 0.9em; }
div.gallery-row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; margin: 10px 0; }
figure.tile { margin: 0; padding: 3px; border: 3px solid #9e9e9e; border-radius: 4px; text-align: center;
              width: 104px; }
figure.tile img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; background: #000000; }
figure.tile figcaption { font-size: 0.75em; line-height: 1.2; margin-top: 2px; word-wrap: break-word; }
figure.query { border-color: #1f5fbf; background: #eaf1fb; }
figure.right { border-color: #2e9d46; }
figure.wrong { border-color: #d00000; background: #fdeaea; }
figure.wrong figcaption { color: #b00000; font-weight: bold; }
"""


def write_html_report(
    path: str | os.PathLike[str],
    *,
    train_records: Sequence[Mapping[str, Any]],
    eval_records: Sequence[Mapping[str, Any]],
    embeddings: torch.Tensor | np.ndarray | None = None,
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    images: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str = "dmlkit run",
    summary: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write the run's report as one self-contained HTML file, atomically; return its path.

    See the module docstring for the sections. Every string from the inputs (title, keys, split and class
    names, summary values) is HTML-escaped.

    Args:
        path: the HTML file to write; its folder is created when missing.
        train_records: training log records (dicts with ``"step"``, ``"epoch"``, ``"loss"`` and other
            numeric keys such as ``"metric_loss"``), in logging order; empty leaves the curves out.
        eval_records: evaluation records (dicts with ``"epoch"``, ``"split"`` and metric keys such as
            ``"precision_at_1"``); empty leaves the metric charts out.
        embeddings: (N, D) embeddings of the test set for the map and the gallery, or None.
        labels: (N,) or (N, 1) labels of ``embeddings``; needed for the map and the gallery.
        images: (N, C, H, W) with C in {1, 3}, or (N, H, W), floats in [0, 1] (clipped), aligned with
            ``embeddings``; given, the nearest-neighbour gallery is drawn.
        class_names: display names, indexed (a sequence) or keyed (a mapping) by label.
        title: the page's title and heading.
        summary: values shown in the table at the top (final metrics, configuration, versions).
        seed: seeds the map's subsample and projection and the gallery's queries.

    Raises:
        MissingDependencyError: matplotlib is not installed (``pip install "dmlkit[report]"``).
        ValueError: shapes that do not fit together (for example ``labels`` not of length N).

    Example:
        >>> import tempfile, os
        >>> train = [{"step": i, "epoch": i // 10, "loss": 1.0 / (i + 1)} for i in range(30)]
        >>> evals = [{"epoch": e, "split": "test", "precision_at_1": 0.5 + 0.1 * e} for e in range(3)]
        >>> out = write_html_report(os.path.join(tempfile.mkdtemp(), "report.html"),
        ...                         train_records=train, eval_records=evals, summary={"epochs": 3})
        >>> text = out.read_text()
        >>> text.startswith("<!DOCTYPE html>"), 'id="training-curves"' in text, 'id="embedding-map"' in text
        (True, True, False)
    """
    figure_class = _figure_class()
    emb, lab, imgs = _check_arrays(embeddings, labels, images)
    names = _class_namer(class_names)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if summary:
        parts.append(_summary_section(summary))
    parts.append(_training_section(figure_class, train_records))
    parts.append(_eval_section(figure_class, eval_records))
    if emb is not None and lab is not None:
        parts.append(_map_section(figure_class, emb, lab, names, seed))
        if imgs is not None:
            parts.append(_gallery_section(emb, lab, imgs, names, seed))
    from .. import __version__

    parts += [f'<p class="note">Written by dmlkit {_esc(__version__)}.</p>', "</body>", "</html>", ""]
    text = "\n".join(part for part in parts if part)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    return atomic_write(target, lambda f: f.write(data))


# ----------------------------------------------------------------------------------------------- inputs


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("matplotlib", "report", "write_html_report") from None
    return Figure


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_arrays(
    embeddings: Any, labels: Any, images: Any
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    emb = lab = imgs = None
    if embeddings is not None:
        emb = _to_numpy(embeddings).astype(np.float64, copy=False)
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ValueError(message(_OWNER, "embeddings", "a non-empty (N, D) array", Described(f"shape {emb.shape}")))
        if not np.isfinite(emb).all():
            raise ValueError(message(_OWNER, "embeddings", "finite", Described("an array with nan or inf")))
    if labels is not None:
        lab = _to_numpy(labels)
        if lab.ndim == 2 and lab.shape[1] == 1:
            lab = lab[:, 0]
        n = None if emb is None else emb.shape[0]
        if lab.ndim != 1 or (n is not None and lab.shape[0] != n):
            rule = "of shape (N,) or (N, 1)" + ("" if n is None else f" with N = {n}, the number of embeddings")
            raise ValueError(message(_OWNER, "labels", rule, Described(f"shape {lab.shape}")))
    if images is not None:
        imgs = _to_numpy(images).astype(np.float64, copy=False)
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        n = None if emb is None else emb.shape[0]
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3) or (n is not None and imgs.shape[0] != n):
            rule = "of shape (N, C, H, W) with C in {1, 3}, or (N, H, W)" + (
                "" if n is None else f", with N = {n}, the number of embeddings"
            )
            raise ValueError(message(_OWNER, "images", rule, Described(f"shape {_to_numpy(images).shape}")))
    return emb, lab, imgs


def _class_namer(class_names: Sequence[str] | Mapping[int, str] | None) -> Any:
    def name(label: Any) -> str:
        key = label.item() if isinstance(label, np.generic) else label
        if isinstance(class_names, Mapping):
            return str(class_names[key]) if key in class_names else f"class {key}"
        if class_names is not None and isinstance(key, (int, np.integer)) and 0 <= key < len(class_names):
            return str(class_names[int(key)])
        return f"class {key}"

    return name


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _is_rate_or_axis(key: str) -> bool:
    if key in _AXIS_KEYS:
        return True
    tokens = {token for token in re.split(r"[^a-z0-9]+", key.lower()) if token}
    return bool(tokens & _RATE_TOKENS) or key.lower().endswith("/s")


def _numeric_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(key, str) and not _is_rate_or_axis(key) and _number(value) is not None:
                keys[key] = None
    return list(keys)


# ----------------------------------------------------------------------------------------------- summary


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0.0:
            return str(value)
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    return str(value)


def _summary_section(summary: Mapping[str, Any]) -> str:
    rows = "\n".join(
        f'<tr><th scope="row">{_esc(key)}</th><td class="value">{_esc(_format_value(value))}</td></tr>'
        for key, value in _flatten(summary)
    )
    return "\n".join(
        [
            '<section id="summary">',
            "<h2>Summary</h2>",
            f'<table class="summary">\n<thead><tr><th>key</th><th>value</th></tr></thead>\n<tbody>\n{rows}\n'
            "</tbody>\n</table>",
            "</section>",
        ]
    )


# ----------------------------------------------------------------------------------------------- figures


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    # No "Software" text chunk: the bytes depend on the data only, and carry no web address.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str, css: str = "figure") -> str:
    return f'<img class="{css}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of the last ``window`` values at each point (of all values so far in the first ones)."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _series(records: Sequence[Mapping[str, Any]], key: str, x_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for position, record in enumerate(records):
        y = _number(record.get(key))
        if y is None:
            continue
        x = _number(record.get(x_key)) if x_key is not None else float(position)
        xs.append(float(position) if x is None else x)
        ys.append(y)
    return np.asarray(xs), np.asarray(ys)


def _smoothing_window(y: np.ndarray) -> int:
    """The moving-average window for a noisy series (one step in 25, at least 5), or 1 for a smooth one.

    A schedule (a learning rate, a temperature) moves monotonically or in a few steps and is drawn as it is;
    a per-iteration loss zigzags, and its trend only shows through an average.
    """
    if len(y) < _SMOOTH_MIN_POINTS:
        return 1
    spread = float(y.max() - y.min())
    roughness = float(np.abs(np.diff(y)).sum()) / spread if spread > 0 else 0.0
    return min(max(5, len(y) // 25), 500) if roughness > _SMOOTH_MIN_ROUGHNESS else 1


def _plot_smoothed(ax: Any, x: np.ndarray, y: np.ndarray, label: str, color: Any) -> None:
    window = _smoothing_window(y)
    if window > 1:
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(x, _moving_average(y, window), color=color, linewidth=1.8, label=f"{label} (mean of {window})")
    else:
        ax.plot(x, y, color=color, linewidth=1.5, marker="o" if len(y) <= 30 else None, markersize=3, label=label)


def _epoch_boundaries(ax: Any, records: Sequence[Mapping[str, Any]], x_key: str | None) -> None:
    """Faint vertical lines where the epoch changes, when records carry epochs and there are few of them."""
    previous = None
    starts = []
    for position, record in enumerate(records):
        epoch = record.get("epoch")
        if epoch is not None and previous is not None and epoch != previous:
            x = _number(record.get(x_key)) if x_key is not None else float(position)
            starts.append(float(position) if x is None else x)
        previous = epoch if epoch is not None else previous
    if 0 < len(starts) <= 50:
        for x in starts:
            ax.axvline(x, color="#bbbbbb", linewidth=0.6, linestyle=":", zorder=0)


def _training_section(figure_class: Any, records: Sequence[Mapping[str, Any]]) -> str:
    keys = _numeric_keys(records)
    if not keys:
        return ""
    x_key = "step" if all(_number(r.get("step")) is not None for r in records) else None
    x_label = "step" if x_key else "record"
    losses = [key for key in keys if "loss" in key.lower()]
    others = [key for key in keys if key not in losses]
    colors = _palette(len(losses))
    html_parts = ['<section id="training-curves">', "<h2>Training curves</h2>"]
    if losses:
        figure = figure_class(figsize=(9.5, 4.2))
        ax = figure.add_subplot()
        for key, color in zip(losses, colors, strict=True):
            x, y = _series(records, key, x_key)
            _plot_smoothed(ax, x, y, key, color)
        _epoch_boundaries(ax, records, x_key)
        ax.set_xlabel(x_label)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
        ax.set_title("Losses")
        html_parts.append(_img(_png(figure), f"Loss curves: {', '.join(losses)}"))
    if others:
        columns = min(3, len(others))
        rows = math.ceil(len(others) / columns)
        figure = figure_class(figsize=(3.4 * columns, 2.8 * rows), layout="constrained")
        for index, key in enumerate(others):
            ax = figure.add_subplot(rows, columns, index + 1)
            x, y = _series(records, key, x_key)
            _plot_smoothed(ax, x, y, key, _palette(1)[0])
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel(x_label, fontsize="small")
            ax.tick_params(labelsize="small")
            ax.grid(alpha=0.3)
        html_parts.append(_img(_png(figure), f"Other training values: {', '.join(others)}"))
    html_parts.append(
        f'<p class="caption">{len(records)} training records. Noisy lines of {_SMOOTH_MIN_POINTS} or more points '
        "show the raw values faintly under a trailing moving average (its window in the legend); dotted lines "
        "mark the starts of epochs.</p>"
    )
    html_parts.append("</section>")
    return "\n".join(html_parts)


def _eval_section(figure_class: Any, records: Sequence[Mapping[str, Any]]) -> str:
    metrics = _numeric_keys(records)
    if not metrics:
        return ""
    splits: dict[str, None] = {}
    for record in records:
        splits[str(record.get("split", "all"))] = None
    colors = dict(zip(splits, _palette(len(splits)), strict=True))
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = figure_class(figsize=(3.6 * columns, 3.0 * rows), layout="constrained")
    lines = 0
    for index, metric in enumerate(metrics):
        ax = figure.add_subplot(rows, columns, index + 1)
        for split in splits:
            subset = [r for r in records if str(r.get("split", "all")) == split]
            x_key = "epoch" if all(_number(r.get("epoch")) is not None for r in subset) else None
            x, y = _series(subset, metric, x_key)
            if len(y):
                ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.5, color=colors[split], label=split)
                lines += 1
        ax.set_title(metric, fontsize="medium")
        ax.set_xlabel("epoch", fontsize="small")
        ax.tick_params(labelsize="small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
    return "\n".join(
        [
            '<section id="metric-curves">',
            "<h2>Evaluation metrics</h2>",
            _img(_png(figure), f"Metric curves: {', '.join(metrics)} for splits {', '.join(splits)}"),
            f'<p class="caption">{lines} lines: one per (split, metric), from {len(records)} evaluation records.</p>',
            "</section>",
        ]
    )


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / max(count - 1, 1)) for i in range(count)]


# ----------------------------------------------------------------------------------------------- map


def _project(points: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``points`` and the name of the method that made them."""
    if points.shape[1] == 2:
        return points, "the embeddings themselves (2-D)"
    if points.shape[1] == 1:
        return np.concatenate([points, np.zeros_like(points)], axis=1), "the embeddings themselves (1-D)"
    n = points.shape[0]
    if n >= _UMAP_MIN_POINTS:
        try:
            import umap
        except ImportError:
            umap = None
        if umap is not None:
            with warnings.catch_warnings():
                # umap-learn warns that a fixed random_state makes it single-threaded: reproducibility is wanted.
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", random_state=seed)
                return np.asarray(reducer.fit_transform(points)), "UMAP (cosine metric)"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, metric="cosine", perplexity=perplexity, init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(points)), f"t-SNE (cosine metric, perplexity {perplexity:g})"


def _map_section(figure_class: Any, emb: np.ndarray, lab: np.ndarray, names: Any, seed: int) -> str:
    n = emb.shape[0]
    if n < 4:
        return ""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, MAP_MAX_POINTS, replace=False)) if n > MAP_MAX_POINTS else np.arange(n)
    points, method = _project(emb[chosen], seed)
    classes, codes = np.unique(lab[chosen], return_inverse=True)
    figure = figure_class(figsize=(8.5, 6.5), layout="constrained")
    ax = figure.add_subplot()
    size = 14 if len(chosen) <= 500 else 6
    if len(classes) <= 20:
        colors = _palette(len(classes))
        for code, (label, color) in enumerate(zip(classes, colors, strict=True)):
            mask = codes == code
            ax.scatter(points[mask, 0], points[mask, 1], s=size, color=color, label=names(label), alpha=0.8)
        ax.legend(fontsize="small", markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.scatter(points[:, 0], points[:, 1], s=size, c=codes, cmap="turbo", alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(chosen)} embeddings, {len(classes)} classes")
    shown = f"{len(chosen)} of {n}" if len(chosen) < n else f"all {n}"
    return "\n".join(
        [
            '<section id="embedding-map">',
            "<h2>Embedding map</h2>",
            _img(_png(figure), f"2-D map of {shown} embeddings by {method}, coloured by class"),
            f'<p class="caption">{_esc(shown)} embeddings mapped to 2-D by {_esc(method)}, coloured by class '
            f"(seed {seed}).</p>",
            "</section>",
        ]
    )


# ----------------------------------------------------------------------------------------------- gallery


def _tile_png(image: np.ndarray) -> str:
    """A (C, H, W) image in [0, 1] as base64 PNG bytes."""
    from matplotlib.image import imsave

    pixels = np.clip(image, 0.0, 1.0)
    pixels = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
    rgb = np.ascontiguousarray((pixels.transpose(1, 2, 0) * 255.0).round().astype(np.uint8))
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png", metadata={"Software": None})  # type: ignore[dict-item]
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _neighbors(emb: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries), k) of each query's k nearest other rows, by Euclidean distance, ties by index."""
    x = torch.from_numpy(emb)
    distances = torch.cdist(x[torch.from_numpy(queries)], x)
    distances[torch.arange(len(queries)), torch.from_numpy(queries)] = math.inf
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    return order.numpy()


def _gallery_section(emb: np.ndarray, lab: np.ndarray, imgs: np.ndarray, names: Any, seed: int) -> str:
    n = emb.shape[0]
    if n < 2:
        return ""
    count, k = min(GALLERY_QUERIES, n), min(GALLERY_NEIGHBORS, n - 1)
    # A generator of its own, so the queries do not depend on whether the map drew a subsample.
    queries = np.sort(np.random.default_rng([seed, 1]).choice(n, count, replace=False))
    found = _neighbors(emb, queries, k)
    wrong_total = 0
    rows = []
    for query, neighbours in zip(queries, found, strict=True):
        query_name = names(lab[query])
        tiles = [
            f'<figure class="tile query" data-index="{query}">{_img(_tile_png(imgs[query]), f"query {query}", "tile")}'
            f"<figcaption>query #{query}<br>{_esc(query_name)}</figcaption></figure>"
        ]
        for rank, index in enumerate(neighbours, start=1):
            wrong = bool(lab[index] != lab[query])
            wrong_total += wrong
            verdict = "&#10007; wrong class" if wrong else "&#10003; same class"
            tiles.append(
                f'<figure class="tile neighbour {"wrong" if wrong else "right"}" data-index="{index}">'
                f"{_img(_tile_png(imgs[index]), f'neighbour {rank} of query {query}', 'tile')}"
                f"<figcaption>{rank}. #{index}<br>{_esc(names(lab[index]))}<br>{verdict}</figcaption></figure>"
            )
        rows.append(f'<div class="gallery-row" data-query="{query}">{"".join(tiles)}</div>')
    return "\n".join(
        [
            '<section id="neighbour-gallery">',
            "<h2>Nearest neighbours</h2>",
            f'<p class="caption">{count} queries (blue) drawn with seed {seed}, each followed by its {k} nearest '
            f"other embeddings (Euclidean distance). {wrong_total} of {count * k} neighbours have another class "
            "than their query: red border, marked &#10007;.</p>",
            *rows,
            "</section>",
        ]
    )
