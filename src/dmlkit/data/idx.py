"""IDX files (the format of MNIST and Fashion-MNIST) and the two data sets stored in it.

An IDX file is a 4-byte magic number ``00 00 <type code> <number of dimensions>``, then one big-endian unsigned
32-bit size per dimension, then the values in row-major order, big-endian. Type codes: ``0x08`` unsigned byte,
``0x09`` signed byte, ``0x0B`` 16-bit integer, ``0x0C`` 32-bit integer, ``0x0D`` 32-bit float, ``0x0E`` 64-bit
float (LeCun, Cortes and Burges, "The MNIST database of handwritten digits", 1998). Files may be gzip
compressed; compression is recognised from the content, not the file name.

MNIST: LeCun, Bottou, Bengio and Haffner, 1998, "Gradient-based learning applied to document recognition".
Fashion-MNIST: Xiao, Rasul and Vollgraf, 2017, arXiv:1708.07747.
"""

from __future__ import annotations

import enum
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import CorruptFileError
from .root import DATA_ENV_VAR, resolve_data_root

__all__ = ["IDX_DTYPES", "Split", "read_idx", "load_mnist", "load_fashion_mnist", "FASHION_MNIST_CLASSES"]

#: IDX type code -> (big-endian numpy dtype, torch dtype).
IDX_DTYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}

#: the names of the ten Fashion-MNIST classes, indexed by label (Xiao et al., 2017).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_SIDE = 28
_NUM_CLASSES = 10
_MAX_INTENSITY = 255.0


class Split(str, enum.Enum):
    """The official train / test partition of a data set.

    Example:
        >>> Split("test") is Split.TEST
        True
    """

    TRAIN = "train"
    TEST = "test"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as file:
        raw = file.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise CorruptFileError(f"read_idx: {path} is not a valid gzip stream ({exc}).") from None


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file, plain or gzip-compressed, into a tensor of its shape and type.

    Args:
        path: the file.

    Returns:
        A tensor whose shape is the file's dimensions and whose dtype follows its type code (see
        :data:`IDX_DTYPES`), in native byte order.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptFileError: a broken gzip stream, a header shorter than it says, a magic number that does not
            start with two zero bytes, an unknown type code, no dimensions, or a data size different from the
            one the dimensions give (truncated file or trailing bytes). The message names the file.

    Example:
        >>> import os, struct, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx2-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + bytes(range(6)))
        >>> read_idx(path)
        tensor([[0, 1, 2],
                [3, 4, 5]], dtype=torch.uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise CorruptFileError(
            f"read_idx: {path} is truncated: {len(raw)} byte(s), shorter than the 4-byte magic number."
        )
    if raw[0] != 0 or raw[1] != 0:
        found = int.from_bytes(raw[:4], "big")
        raise CorruptFileError(
            f"read_idx: {path} has the wrong magic number 0x{found:08X}: an IDX file starts with two zero bytes "
            "(0x0000TTDD, TT the type code, DD the number of dimensions)."
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise CorruptFileError(f"read_idx: {path} has the unknown IDX type code 0x{code:02X} (known: {known}).")
    if ndim == 0:
        raise CorruptFileError(f"read_idx: {path} declares 0 dimensions; an IDX file has at least one.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(
            f"read_idx: {path} is truncated: its header needs {header} bytes for {ndim} dimension(s), "
            f"the file holds {len(raw)}."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    big_endian, torch_dtype = IDX_DTYPES[code]
    itemsize = np.dtype(big_endian).itemsize
    expected = math.prod(dims) * itemsize
    actual = len(raw) - header
    if actual != expected:
        problem = "is truncated" if actual < expected else "has a size mismatch"
        raise CorruptFileError(
            f"read_idx: {path} {problem}: dimensions {dims} of {itemsize}-byte values need {expected} bytes of "
            f"data, the file holds {actual}."
        )
    values = np.frombuffer(raw, dtype=big_endian, offset=header).reshape(dims)
    native = values.astype(values.dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(native).to(torch_dtype)


def _find(owner: str, directories: list[Path], stem: str) -> Path:
    tried = []
    for directory in directories:
        for name in (f"{stem}.gz", stem):
            candidate = directory / name
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise FileNotFoundError(
        f"{owner}: no file {stem}[.gz] found; tried {', '.join(tried)}. Pass `root` or set the environment "
        f"variable {DATA_ENV_VAR} to the folder holding the files."
    )


def _load_idx_images(
    owner: str, root: str | os.PathLike[str] | None, split: Split | str, subfolders: tuple[str, ...]
) -> tuple[Tensor, Tensor]:
    part = check_choice(owner, "split", split, Split)
    base = resolve_data_root(root)
    directories = [base] + [base / sub for sub in subfolders]
    prefix = "train" if part is Split.TRAIN else "t10k"
    image_path = _find(owner, directories, f"{prefix}-images-idx3-ubyte")
    label_path = _find(owner, directories, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != torch.uint8 or images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise CorruptFileError(
            f"{owner}: {image_path} must hold uint8 images of shape (N, {_IMAGE_SIDE}, {_IMAGE_SIDE}), "
            f"got {images.dtype} of shape {tuple(images.shape)}."
        )
    if labels.dtype != torch.uint8 or labels.ndim != 1:
        raise CorruptFileError(
            f"{owner}: {label_path} must hold 1-D uint8 labels, got {labels.dtype} of shape {tuple(labels.shape)}."
        )
    if labels.shape[0] != images.shape[0]:
        raise CorruptFileError(
            f"{owner}: {label_path} holds {labels.shape[0]} labels but {image_path} holds {images.shape[0]} images."
        )
    if labels.numel() and int(labels.max()) >= _NUM_CLASSES:
        raise CorruptFileError(f"{owner}: {label_path} holds the label {int(labels.max())}; labels run from 0 to 9.")
    features = images.unsqueeze(1).to(torch.float32).div_(_MAX_INTENSITY)
    return features, labels.to(torch.int64)


def load_mnist(root: str | os.PathLike[str] | None = None, split: Split | str = "train") -> tuple[Tensor, Tensor]:
    """Load MNIST (LeCun et al., 1998) from its four IDX files, gzip-compressed or not.

    The files keep their official names (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-...``) and are looked for in ``root``, then ``root/mnist``, then ``root/MNIST/raw``. Without
    ``root``, see :func:`~dmlkit.data.resolve_data_root`.

    Args:
        root: the folder holding the files (or their ``mnist`` folder); None for the default data folder.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``(features, labels)``: features ``float32`` in ``[0, 1]`` (pixel / 255) of shape ``(N, 1, 28, 28)``;
        labels ``int64`` digits 0-9 of shape ``(N,)``.

    Raises:
        FileNotFoundError: a file is missing (the message lists the paths tried).
        CorruptFileError: a file is not valid IDX, or the files do not hold 28x28 uint8 images with one label
            0-9 each.
        ValueError: an unknown ``split``.

    Example:
        >>> features, labels = load_mnist(split="test")  # doctest: +SKIP
        >>> tuple(features.shape), labels.dtype  # doctest: +SKIP
        ((10000, 1, 28, 28), torch.int64)
    """
    return _load_idx_images("load_mnist", root, split, ("mnist", os.path.join("MNIST", "raw")))


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, split: Split | str = "train"
) -> tuple[Tensor, Tensor]:
    """Load Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017, arXiv:1708.07747) from its four IDX files.

    The same layout as :func:`load_mnist`; the files are looked for in ``root``, then ``root/fashion-mnist``,
    then ``root/FashionMNIST/raw``. Class names are in :data:`FASHION_MNIST_CLASSES`.

    Args:
        root: the folder holding the files (or their ``fashion-mnist`` folder); None for the default.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``(features, labels)`` as :func:`load_mnist`.

    Raises:
        FileNotFoundError, CorruptFileError, ValueError: as :func:`load_mnist`.

    Example:
        >>> features, labels = load_fashion_mnist(split="test")  # doctest: +SKIP
        >>> FASHION_MNIST_CLASSES[int(labels[0])]  # doctest: +SKIP
        'Ankle boot'
    """
    return _load_idx_images("load_fashion_mnist", root, split, ("fashion-mnist", os.path.join("FashionMNIST", "raw")))
