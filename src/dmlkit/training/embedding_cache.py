"""Cache a frozen encoder's outputs on disk, so that training a head on top costs only the head.

When a pretrained encoder stays frozen and only a small head is trained on its outputs (the fixed feature
extractor setting of Kornblith, Shlens and Le, 2019, arXiv:1805.08974), the encoder's output for an input never
changes: computing it once and reading it back every epoch removes the encoder from the training loop.

An entry of the cache is two files in its folder: ``{name}.npy``, the ``(N, D)`` outputs in input order,
and ``{name}.json``, a sidecar holding the format version, the encoder's identity, a fingerprint of the
inputs, the array's shape and dtype and the SHA-256 of its bytes. An entry is reused only when the encoder's
identity and the inputs' fingerprint both match; otherwise it is recomputed. Both files are written to a
temporary file and moved into place, the sidecar last (and the old sidecar removed first), so an interrupted
write leaves either the previous entry or no entry, never data vouched for by the wrong sidecar. Entries are
read back memory-mapped: pages are loaded on demand.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._atomic import atomic_write
from .._validation import Described, check_choice, check_range, message
from ..errors import CorruptFileError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_FORMAT_VERSION",
    "CacheStatus",
    "OnCorrupt",
    "EmbeddingCache",
    "module_fingerprint",
    "inputs_fingerprint",
]

CACHE_FORMAT = "dmlkit.embedding_cache"
CACHE_FORMAT_VERSION = 1
_OWNER = "EmbeddingCache"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}
#: bytes hashed per step when checking an entry, so verification never holds a second copy of the array
_HASH_CHUNK = 1 << 24

Inputs = Sequence[str] | Tensor | np.ndarray


class CacheStatus(str, enum.Enum):
    """The state of a cache entry for given inputs and encoder.

    ``MISSING``: no sidecar. ``FRESH``: it matches and may be reused. ``STALE``: written for another encoder
    or other inputs. ``CORRUPT``: unreadable, of an unknown format version, or its array does not match its
    sidecar (shape, dtype or checksum).
    """

    MISSING = "missing"
    FRESH = "fresh"
    STALE = "stale"
    CORRUPT = "corrupt"


class OnCorrupt(str, enum.Enum):
    """What :meth:`EmbeddingCache.embeddings` does with a corrupt entry: raise, or warn and recompute it."""

    RAISE = "raise"
    RECOMPUTE = "recompute"


def _tensor_bytes(t: Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's class, its ``repr`` (architecture and settings) and its ``state_dict``.

    Every parameter and persistent buffer enters by name, dtype, shape and bytes, so any change of weights
    changes the fingerprint.

    Example:
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> module_fingerprint(a) == module_fingerprint(a), module_fingerprint(a) == module_fingerprint(b)
        (True, False)
    """
    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(f"{key}\0".encode())
        if isinstance(value, Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}\0".encode())
            digest.update(_tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def inputs_fingerprint(inputs: Inputs) -> str:
    """SHA-256 of a list of texts (each with its length) or of a tensor or array (dtype, shape and bytes).

    Example:
        >>> inputs_fingerprint(["a", "bc"]) == inputs_fingerprint(["ab", "c"])
        False
    """
    digest = hashlib.sha256()
    if isinstance(inputs, (Tensor, np.ndarray)):
        t = inputs if isinstance(inputs, Tensor) else torch.from_numpy(np.ascontiguousarray(inputs))
        digest.update(f"tensor\0{t.dtype}{tuple(t.shape)}\0".encode())
        digest.update(_tensor_bytes(t))
        return digest.hexdigest()
    digest.update(b"texts\0")
    for text in inputs:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class EmbeddingCache:
    """Encoder outputs for whole data sets, computed once and kept in memory-mapped ``.npy`` files.

    Args:
        folder: the cache folder (created when missing).
        encoder: the frozen encoder. An ``nn.Module`` is identified by :func:`module_fingerprint` unless
            ``encoder_id`` is given, and is run in eval mode (its mode is restored afterwards); any other
            callable needs an ``encoder_id``.
        encoder_id: a string naming the encoder and everything else that shapes its outputs (say, a model
            name and version, and the settings of ``encode``). Required when those are not in the module's
            weights or ``repr``.
        encode: ``encode(batch) -> (len(batch), D)`` tensor or array, where a batch is a slice of the inputs
            (a list of texts, or a tensor moved to the encoder's device); by default ``encoder(batch)``.
            It runs without gradients.
        batch_size: inputs per call of ``encode``, ``>= 1``.
        dtype: the stored dtype, ``torch.float16``, ``float32`` or ``float64``.
        on_corrupt: ``"raise"`` (a :class:`~dmlkit.errors.CorruptFileError`) or ``"recompute"`` (a warning,
            then the entry is rewritten).
        verify: check the stored array's SHA-256 on every read (one pass over the file).

    Example:
        >>> import tempfile
        >>> encoder = torch.nn.Linear(3, 2)
        >>> cache = EmbeddingCache(tempfile.mkdtemp(), encoder, batch_size=2)
        >>> x = torch.randn(5, 3)
        >>> cache.status(x, "train").value
        'missing'
        >>> first = cache.embeddings(x, "train")
        >>> cache.status(x, "train").value, bool(torch.allclose(first, encoder(x)))
        ('fresh', True)
        >>> with torch.no_grad():
        ...     _ = encoder.weight.add_(1.0)
        >>> cache.status(x, "train").value
        'stale'
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        encoder: nn.Module | Callable[..., Any],
        *,
        encoder_id: str | None = None,
        encode: Callable[[Any], Tensor | np.ndarray] | None = None,
        batch_size: int = 256,
        dtype: torch.dtype = torch.float32,
        on_corrupt: OnCorrupt | str = "raise",
        verify: bool = True,
    ) -> None:
        if encoder_id is not None and (not isinstance(encoder_id, str) or not encoder_id):
            raise ValueError(message(_OWNER, "encoder_id", "a non-empty string or None", encoder_id))
        if not isinstance(encoder, nn.Module):
            if not callable(encoder):
                rule = "an nn.Module or a callable"
                raise TypeError(message(_OWNER, "encoder", rule, Described(type(encoder).__name__)))
            if encoder_id is None:
                rule = "given when `encoder` is not an nn.Module (its weights cannot be fingerprinted)"
                raise ValueError(message(_OWNER, "encoder_id", rule, None))
        if encode is not None and not callable(encode):
            raise TypeError(message(_OWNER, "encode", "a callable or None", Described(type(encode).__name__)))
        check_range(_OWNER, "batch_size", batch_size, low=1, integer=True)
        if dtype not in _DTYPES:
            raise ValueError(message(_OWNER, "dtype", "torch.float16, torch.float32 or torch.float64", dtype))
        self.folder = Path(folder)
        self.encoder = encoder
        self.encoder_id = encoder_id
        self.encode = encode
        self.batch_size = batch_size
        self.dtype = dtype
        self.on_corrupt = check_choice(_OWNER, "on_corrupt", on_corrupt, OnCorrupt)
        self.verify = bool(verify)

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache(folder={str(self.folder)!r}, encoder_id={self.encoder_id!r}, "
            f"batch_size={self.batch_size}, dtype={self.dtype}, on_corrupt={self.on_corrupt.value!r})"
        )

    def identity(self) -> str:
        """The encoder identity stored with each entry: ``encoder_id``, or ``"sha256:"`` and the fingerprint."""
        if self.encoder_id is not None:
            return self.encoder_id
        assert isinstance(self.encoder, nn.Module)  # checked in __init__
        return "sha256:" + module_fingerprint(self.encoder)

    def paths(self, name: str) -> tuple[Path, Path]:
        """The ``(.npy, .json)`` files of the entry ``name``."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            rule = "a file name of letters, digits, '.', '_' or '-' (starting with a letter or digit)"
            raise ValueError(message(_OWNER, "name", rule, name))
        return self.folder / f"{name}.npy", self.folder / f"{name}.json"

    def status(self, inputs: Inputs, name: str | None = None) -> CacheStatus:
        """Whether the entry for ``inputs`` exists, matches them and this encoder, and reads back intact."""
        fingerprint = self._check_inputs(inputs)
        key = self._name(name, fingerprint)
        try:
            meta = self._read_sidecar(key)
            if meta is None:
                return CacheStatus.MISSING
            if not self._matches(meta, fingerprint, len(inputs)):
                return CacheStatus.STALE
            self._read_array(key, meta)
        except CorruptFileError:
            return CacheStatus.CORRUPT
        return CacheStatus.FRESH

    def embeddings(self, inputs: Inputs, name: str | None = None, *, recompute: bool = False) -> Tensor:
        """The encoder's outputs for ``inputs``, ``(len(inputs), D)``: read from the cache, or computed and stored.

        Args:
            inputs: a list of texts, or a tensor or array whose first dimension indexes the inputs.
            name: the entry's name (a file name stem); by default derived from the inputs' fingerprint.
            recompute: compute and store even when a fresh entry exists.

        Returns:
            A CPU tensor of the cache's dtype backed by the memory-mapped file (copy-on-write: changing it
            never changes the file).

        Raises:
            CorruptFileError: the entry is corrupt and ``on_corrupt="raise"``.
        """
        fingerprint = self._check_inputs(inputs)
        key = self._name(name, fingerprint)
        if not recompute:
            try:
                meta = self._read_sidecar(key)
                if meta is not None and self._matches(meta, fingerprint, len(inputs)):
                    return self._read_array(key, meta)
            except CorruptFileError as error:
                if self.on_corrupt is OnCorrupt.RAISE:
                    raise
                warnings.warn(f"{error} Recomputing the entry.", RuntimeWarning, stacklevel=2)
        meta = self._write(key, inputs, fingerprint)
        return self._read_array(key, meta)

    def clear(self, name: str) -> None:
        """Delete the entry ``name`` (both files); nothing happens when it does not exist."""
        npy, sidecar = self.paths(name)
        sidecar.unlink(missing_ok=True)
        npy.unlink(missing_ok=True)

    def _check_inputs(self, inputs: Any) -> str:
        if isinstance(inputs, (Tensor, np.ndarray)):
            if inputs.ndim == 0 or inputs.shape[0] == 0:
                rule = "a non-empty list of texts, tensor or array"
                raise ValueError(message(_OWNER, "inputs", rule, Described(f"shape {tuple(inputs.shape)}")))
            if isinstance(inputs, np.ndarray) and inputs.dtype == object:
                raise TypeError(message(_OWNER, "inputs", "a numeric array", Described("an object array")))
        else:
            if isinstance(inputs, str) or not isinstance(inputs, Sequence):
                rule = "a list of texts, a tensor or an array"
                raise TypeError(message(_OWNER, "inputs", rule, Described(type(inputs).__name__)))
            if len(inputs) == 0:
                raise ValueError(message(_OWNER, "inputs", "non-empty", Described("0 inputs")))
            bad = next((i for i, text in enumerate(inputs) if not isinstance(text, str)), None)
            if bad is not None:
                rule = "a list of texts (str)"
                raise TypeError(message(_OWNER, f"inputs[{bad}]", rule, Described(type(inputs[bad]).__name__)))
        return inputs_fingerprint(inputs)

    def _name(self, name: str | None, fingerprint: str) -> str:
        key = f"inputs-{fingerprint[:16]}" if name is None else name
        self.paths(key)
        return key

    def _matches(self, meta: dict[str, Any], fingerprint: str, count: int) -> bool:
        return (
            meta["encoder_id"] == self.identity()
            and meta["inputs_sha256"] == fingerprint
            and meta["shape"][0] == count
            and meta["dtype"] == _DTYPES[self.dtype]
        )

    def _read_sidecar(self, name: str) -> dict[str, Any] | None:
        npy, sidecar = self.paths(name)
        if not sidecar.exists():
            return None
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{_OWNER}: cannot read the cache sidecar {sidecar}: {exc}.") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise CorruptFileError(f"{_OWNER}: {sidecar} is not an embedding cache sidecar.")
        version = meta.get("format_version")
        if version != CACHE_FORMAT_VERSION:
            raise CorruptFileError(
                f"{_OWNER}: {sidecar} has format version {version!r}; this version of dmlkit reads version "
                f"{CACHE_FORMAT_VERSION}."
            )
        shape = meta.get("shape")
        valid = (
            isinstance(meta.get("encoder_id"), str)
            and isinstance(meta.get("inputs_sha256"), str)
            and isinstance(meta.get("sha256"), str)
            and meta.get("dtype") in _DTYPES.values()
            and isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        )
        if not valid:
            raise CorruptFileError(f"{_OWNER}: the cache sidecar {sidecar} lacks or garbles a field.")
        return meta

    def _read_array(self, name: str, meta: dict[str, Any]) -> Tensor:
        npy, _ = self.paths(name)
        try:
            array = np.load(npy, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CorruptFileError(f"{_OWNER}: cannot read the cached array {npy}: {exc}.") from None
        if list(array.shape) != meta["shape"] or array.dtype != np.dtype(meta["dtype"]):
            raise CorruptFileError(
                f"{_OWNER}: {npy} holds an array of shape {list(array.shape)} and dtype {array.dtype}; its "
                f"sidecar says shape {meta['shape']} and dtype {meta['dtype']}."
            )
        if self.verify and _array_sha256(array) != meta["sha256"]:
            raise CorruptFileError(f"{_OWNER}: {npy} does not match the checksum in its sidecar.")
        return torch.from_numpy(array)

    def _batches(self, inputs: Inputs, device: torch.device) -> Iterator[Any]:
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            if isinstance(batch, np.ndarray):
                batch = torch.from_numpy(np.ascontiguousarray(batch))
            yield batch.to(device) if isinstance(batch, Tensor) else list(batch)

    def _encoded(self, inputs: Inputs) -> Generator[np.ndarray, None, None]:
        """The outputs of successive batches as C-contiguous arrays of the stored dtype."""
        module = self.encoder if isinstance(self.encoder, nn.Module) else None
        device = next((p.device for p in module.parameters()), torch.device("cpu")) if module else torch.device("cpu")
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        encode = self.encode if self.encode is not None else self.encoder
        done = 0
        try:
            with torch.no_grad():
                for batch in self._batches(inputs, device):
                    out = encode(batch)
                    t = out.detach() if isinstance(out, Tensor) else torch.as_tensor(np.asarray(out))
                    if t.ndim != 2 or t.shape[0] != len(batch) or not t.is_floating_point():
                        rule = "a function returning (len(batch), D) floating-point outputs"
                        shown = f"{tuple(t.shape)} {t.dtype} outputs for a batch of {len(batch)}"
                        raise ValueError(message(_OWNER, "encode", rule, Described(shown)))
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(
                            message(_OWNER, "encode", "finite outputs", Described(f"NaN or Inf in rows {done}..."))
                        )
                    done += len(batch)
                    yield np.ascontiguousarray(t.to(device="cpu", dtype=self.dtype).numpy())
        finally:
            if module is not None:
                module.train(was_training)

    def _write(self, name: str, inputs: Inputs, fingerprint: str) -> dict[str, Any]:
        npy, sidecar = self.paths(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = self.identity()
        # The old sidecar goes first: until the new one is in place the entry reads as missing, not corrupt.
        sidecar.unlink(missing_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{npy.name}.", suffix=".tmp", dir=self.folder)
        os.close(handle)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a cache file is as readable as any other
        digest = hashlib.sha256()
        try:
            out: np.memmap | None = None
            row = 0
            with contextlib.closing(self._encoded(inputs)) as chunks:
                for chunk in chunks:
                    if out is None:
                        shape = (len(inputs), chunk.shape[1])
                        out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=chunk.dtype, shape=shape)
                    elif chunk.shape[1] != out.shape[1]:
                        rule = f"a function returning outputs of one size ({out.shape[1]})"
                        raise ValueError(message(_OWNER, "encode", rule, Described(f"size {chunk.shape[1]}")))
                    out[row : row + chunk.shape[0]] = chunk
                    digest.update(chunk.data)
                    row += chunk.shape[0]
            assert out is not None  # inputs are non-empty
            out.flush()
            shape = out.shape
            del out
            with open(tmp_name, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(tmp_name, npy)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        meta = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "encoder_id": identity,
            "inputs_sha256": fingerprint,
            "shape": [int(shape[0]), int(shape[1])],
            "dtype": _DTYPES[self.dtype],
            "sha256": digest.hexdigest(),
        }
        text = json.dumps(meta, indent=2).encode("utf-8")
        atomic_write(sidecar, lambda file: file.write(text))
        return meta


def _array_sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    flat = array.reshape(-1)
    step = max(1, _HASH_CHUNK // max(1, array.itemsize))
    for start in range(0, flat.shape[0], step):
        digest.update(np.ascontiguousarray(flat[start : start + step]).data)
    return digest.hexdigest()
