"""Image data sets: a folder of images per class, or a CSV file of ``(path, label)`` rows.

Images are decoded with Pillow (imported when the first image is read; ``pip install "dmlkit[images]"``),
converted to RGB and returned as ``float32`` tensors of shape ``(3, H, W)`` with values in ``[0, 1]``, then
passed through the optional ``transform`` (see :mod:`dmlkit.data.transforms`). Pixels are used as stored: the
EXIF orientation tag is not applied.

Both data sets expose ``samples`` (``(path, label)`` pairs), ``labels`` (an ``int64`` tensor, for samplers
such as :class:`~dmlkit.samplers.MPerClassSampler`), ``targets`` (the same as a list), ``classes`` and
``class_to_idx``. Files are checked when an item is read, so building a data set over many images costs only a
directory scan or a CSV read; a missing or unreadable image raises an error that names the file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._validation import Described, message
from ..errors import CorruptFileError, MissingDependencyError

__all__ = ["IMAGE_EXTENSIONS", "load_image", "ImageFolderDataset", "ImageCSVDataset"]

#: file name endings (lower case) read as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_MAX_INTENSITY = 255.0

Transform = Callable[[Tensor], Tensor]


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("Pillow", "images", "Reading images") from None
    return Image


def load_image(path: str | os.PathLike[str]) -> Tensor:
    """Decode an image file into an RGB ``float32`` tensor of shape ``(3, H, W)`` with values in ``[0, 1]``.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (the alpha channel is dropped).

    Args:
        path: the image file.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        CorruptFileError: Pillow cannot decode it (not an image, truncated, unsupported format).
        MissingDependencyError: Pillow is not installed.

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "red.png")
        >>> Image.new("RGB", (2, 1), (255, 0, 0)).save(path)
        >>> load_image(path)
        tensor([[[1., 1.]],
        <BLANKLINE>
                [[0., 0.]],
        <BLANKLINE>
                [[0., 0.]]])
    """
    image_module = _pillow()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_image: the image file {path} does not exist.")
    try:
        with image_module.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow reports undecodable files as OSError (UnidentifiedImageError, "image file is truncated"),
        # and some malformed headers as ValueError or SyntaxError.
        raise CorruptFileError(f"load_image: cannot read the image {path}: {exc}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32).div_(_MAX_INTENSITY)


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions) and not name.startswith(".")


def _check_transform(owner: str, transform: Any) -> Transform | None:
    if transform is not None and not callable(transform):
        raise TypeError(message(owner, "transform", "a callable or None", Described(type(transform).__name__)))
    return transform


def _check_extensions(owner: str, extensions: Any) -> tuple[str, ...]:
    ok = isinstance(extensions, Sequence) and not isinstance(extensions, str) and len(extensions) > 0
    if not ok or not all(isinstance(e, str) and e.startswith(".") for e in extensions):
        raise ValueError(message(owner, "extensions", "a non-empty sequence of endings such as '.jpg'", extensions))
    return tuple(e.lower() for e in extensions)


class _ImageListDataset(Dataset[tuple[Tensor, int]]):
    """Images listed as ``samples``, decoded on access."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform: Transform | None) -> None:
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, as a list (the name torchvision's data sets use)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"


class ImageFolderDataset(_ImageListDataset):
    """Images sorted into one folder per class: ``root/<class name>/**/<image>``.

    The class folders, sorted by name, get the labels ``0 .. C-1``; images are found recursively inside them
    (files whose name ends in one of ``extensions``, case-insensitive, hidden files skipped) and listed in
    sorted path order. Files directly inside ``root`` are ignored.

    Args:
        root: the folder holding one subfolder per class.
        transform: applied to each ``(3, H, W)`` image tensor, e.g. a :class:`~dmlkit.data.transforms.Compose`.
        extensions: the file endings read as images.

    Attributes:
        classes: the class names (folder names); ``classes[label]`` names a label.
        class_to_idx: class name -> label.
        samples: ``(path, label)`` for each image.
        labels: ``int64`` tensor of the labels.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        ValueError: ``root`` has no class folder, or a class folder holds no image (a silently missing class
            would shift every later label).

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for name in ("dog", "cat"):
        ...     os.mkdir(os.path.join(root, name))
        ...     Image.new("RGB", (4, 3)).save(os.path.join(root, name, "0.png"))
        >>> data = ImageFolderDataset(root)
        >>> data.classes, data.labels.tolist(), tuple(data[1][0].shape), data[1][1]
        (['cat', 'dog'], [0, 1], (3, 3, 4), 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        owner = "ImageFolderDataset"
        self.root = Path(root)
        exts = _check_extensions(owner, extensions)
        checked_transform = _check_transform(owner, transform)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{owner}: the image folder {self.root} does not exist or is not a folder.")
        class_dirs = sorted(
            (entry for entry in self.root.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
            key=lambda entry: entry.name,
        )
        if not class_dirs:
            raise ValueError(f"{owner}: the folder {self.root} holds no class folder (expected root/<class>/<image>).")
        samples: list[tuple[Path, int]] = []
        empty = []
        for label, class_dir in enumerate(class_dirs):
            found = sorted(
                Path(folder) / name
                for folder, _, names in os.walk(class_dir, followlinks=True)
                for name in names
                if _is_image(name, exts)
            )
            if not found:
                empty.append(class_dir.name)
            samples += [(path, label) for path in found]
        if empty:
            raise ValueError(
                f"{owner}: the class folder(s) {', '.join(empty)} in {self.root} hold no image "
                f"(file endings read: {', '.join(exts)})."
            )
        classes = [entry.name for entry in class_dirs]
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        super().__init__(samples, classes, checked_transform)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class ImageCSVDataset(_ImageListDataset):
    """Images listed in a CSV (or TSV) file, one ``(path, label)`` row per image.

    Columns are chosen by index or, when the file has a header row, by name. Header detection (``header=None``):
    a header is assumed when a column is given by name, and otherwise when the first row's path cell does not
    end with an image extension (see :data:`IMAGE_EXTENSIONS`). Relative paths are resolved against ``root``,
    by default the folder of the CSV file. Blank lines are skipped; a UTF-8 byte-order mark is ignored.

    Labels: when every label cell is an integer, the integers are kept (``classes`` lists them as text, sorted
    by value, and ``class_to_idx`` maps that text to the integer); otherwise the distinct label texts, sorted,
    become the labels ``0 .. C-1`` (``classes[label]`` names a label).

    Args:
        csv_path: the file.
        path_column: index or header name of the image path column.
        label_column: index or header name of the label column.
        header: True if the first row names the columns, False if not, None to detect it.
        delimiter: the field separator (``","``, or ``"\\t"`` for TSV).
        root: the folder relative paths start from; None for the CSV file's folder.
        transform: applied to each ``(3, H, W)`` image tensor.

    Raises:
        FileNotFoundError: the CSV file does not exist.
        ValueError: no data row, a row with too few fields or an empty path or label (the message gives the line
            number), an unknown column name, or a column given by name without a header row.

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> Image.new("RGB", (5, 2)).save(os.path.join(folder, "a.png"))
        >>> with open(os.path.join(folder, "list.csv"), "w") as f:
        ...     _ = f.write("file,kind\\na.png,zebra\\na.png,ant\\n")
        >>> data = ImageCSVDataset(os.path.join(folder, "list.csv"), "file", "kind")
        >>> data.classes, data.labels.tolist(), tuple(data[0][0].shape)
        (['ant', 'zebra'], [1, 0], (3, 2, 5))
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        path_column: int | str = 0,
        label_column: int | str = 1,
        *,
        header: bool | None = None,
        delimiter: str = ",",
        root: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        owner = "ImageCSVDataset"
        checked_transform = _check_transform(owner, transform)
        self.csv_path = Path(csv_path)
        self.root = self.csv_path.parent if root is None else Path(root)
        for arg, column in (("path_column", path_column), ("label_column", label_column)):
            if (
                isinstance(column, bool)
                or not isinstance(column, (int, str))
                or (isinstance(column, int) and column < 0)
            ):
                raise ValueError(message(owner, arg, "a column index >= 0 or a header name", column))
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ValueError(message(owner, "delimiter", "a single character", delimiter))
        by_name = isinstance(path_column, str) or isinstance(label_column, str)
        if header is False and by_name:
            raise ValueError(message(owner, "header", "True or None when a column is given by name", header))
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"{owner}: the CSV file {self.csv_path} does not exist.")
        with open(self.csv_path, newline="", encoding="utf-8-sig") as file:
            rows = [(line, row) for line, row in _numbered_rows(csv.reader(file, delimiter=delimiter)) if row]
        if not rows:
            raise ValueError(f"{owner}: the CSV file {self.csv_path} holds no data row.")
        if header is None:
            first = rows[0][1]
            header = by_name or not (
                isinstance(path_column, int)
                and path_column < len(first)
                and _is_image(Path(first[path_column].strip()).name, IMAGE_EXTENSIONS)
            )
        names: list[str] = []
        if header and rows:
            names = [cell.strip() for cell in rows[0][1]]
            rows = rows[1:]
        if not rows:
            raise ValueError(f"{owner}: the CSV file {self.csv_path} holds no data row.")
        path_index = self._column_index(path_column, names, "path_column")
        label_index = self._column_index(label_column, names, "label_column")
        needed = max(path_index, label_index) + 1
        paths: list[Path] = []
        label_texts: list[str] = []
        for line, row in rows:
            if len(row) < needed:
                raise ValueError(
                    f"{owner}: line {line} of {self.csv_path} has {len(row)} field(s); columns {path_index} and "
                    f"{label_index} are read."
                )
            path_text, label_text = row[path_index].strip(), row[label_index].strip()
            if not path_text or not label_text:
                empty = "path" if not path_text else "label"
                raise ValueError(f"{owner}: line {line} of {self.csv_path} has an empty {empty}.")
            path = Path(path_text).expanduser()
            paths.append(path if path.is_absolute() else self.root / path)
            label_texts.append(label_text)
        integers = [_parse_int(text) for text in label_texts]
        if all(value is not None for value in integers):
            values = [int(value) for value in integers if value is not None]
            distinct = sorted(set(values))
            classes = [str(v) for v in distinct]
            self.class_to_idx = {str(v): v for v in distinct}
            labels = values
        else:
            classes = sorted(set(label_texts))
            self.class_to_idx = {name: i for i, name in enumerate(classes)}
            labels = [self.class_to_idx[text] for text in label_texts]
        super().__init__(list(zip(paths, labels, strict=True)), classes, checked_transform)

    def _column_index(self, column: int | str, names: list[str], arg: str) -> int:
        if isinstance(column, int):
            return column
        if column not in names:
            raise ValueError(message("ImageCSVDataset", arg, f"a column of the header ({', '.join(names)})", column))
        return names.index(column)


def _numbered_rows(reader: Any) -> list[tuple[int, list[str]]]:
    """Rows with the (1-based) line on which each starts, for error messages."""
    out = []
    line = 1
    for row in reader:
        out.append((line, row))
        line = reader.line_num + 1
    return out
