"""Run logs: one JSON-lines file and one CSV file per stream, optionally mirrored to TensorBoard.

A *stream* is a named series of flat records, for example ``"train"`` (one record per iteration: step, epoch,
loss, throughput) and ``"eval"`` (one record per evaluation: epoch, split, metrics). Stream ``name`` is kept
in ``<folder>/name.jsonl`` (one JSON object per line, the form :meth:`RunLogger.records` reads back) and in
``<folder>/name.csv`` (a header and one row per record, for spreadsheets and pandas).

Values that are not finite floats (``nan``, ``inf``, ``-inf``: a diverged loss, say) have no JSON form, so the
JSON-lines file stores them as ``null`` and :meth:`RunLogger.records` returns ``None`` for them; the CSV keeps
what they were, as the cells ``nan``, ``inf`` and ``-inf`` (which ``float()`` and pandas read back). ``None``
itself is an empty CSV cell, and so is a column a record does not have.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .._atomic import atomic_write
from .._validation import message
from ..errors import CorruptFileError, MissingDependencyError

__all__ = ["LogValue", "RunLogger", "TENSORBOARD_FOLDER"]

#: what a record may hold; numpy scalars and one-element tensors are accepted and stored as their Python value.
LogValue = int | float | str | bool | None

_OWNER = "RunLogger"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: the folder, inside the run folder, that TensorBoard's event files go to.
TENSORBOARD_FOLDER = "tensorboard"


class _Stream:
    """The open files and the state of one stream: its CSV columns and how many records it holds."""

    def __init__(self, jsonl_path: Path, csv_path: Path) -> None:
        self.jsonl_path = jsonl_path
        self.csv_path = csv_path
        self.count = _count_lines(jsonl_path)
        self.columns = _read_header(csv_path)
        if self.columns is None and self.count:
            # The JSON lines are the record of truth: a CSV lost after a crash is rebuilt from them.
            self.columns = _rewrite_csv(csv_path, _read_jsonl(jsonl_path), None)
        _end_with_newline(jsonl_path)
        _end_with_newline(csv_path)
        self.jsonl: IO[str] | None = None
        self.csv: IO[str] | None = None

    def open(self) -> None:
        # The handles stay open across log() calls (one open per stream, not per record); close() ends them.
        if self.jsonl is None:
            self.jsonl = open(self.jsonl_path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        if self.csv is None:
            self.csv = open(self.csv_path, "a", encoding="utf-8", newline="")  # noqa: SIM115

    def close(self) -> None:
        for handle in (self.jsonl, self.csv):
            if handle is not None:
                handle.close()
        self.jsonl = self.csv = None


class RunLogger:
    """Append flat records to per-stream JSON-lines and CSV files in a run folder (and TensorBoard).

    Each :meth:`log` call appends one line to ``<folder>/<stream>.jsonl`` and one row to
    ``<folder>/<stream>.csv`` and flushes both, so the files are complete after every call. The CSV columns
    are those of the stream's first record; a later record that brings a new key widens the header, and the
    CSV is rewritten atomically with an empty cell for that key in the older rows. A folder that already has
    logs is continued: new records are appended after the existing ones. Whole-file rewrites (widening,
    :meth:`truncate`) go through a temporary file and ``os.replace``, so a crash leaves the old file or the
    new one, never half of one. See the module docstring for how non-finite floats and ``None`` are stored.

    With ``tensorboard=True`` every numeric field (int or float, not bool) of a record is also written as
    the TensorBoard scalar ``<stream>/<key>`` in ``<folder>/tensorboard``, at global step ``record["step"]``
    when the record has an integer ``"step"``, else at the record's position in its stream (0 for the first
    record ever logged to it, counting records of a continued folder). ``"step"`` itself is not plotted.

    Args:
        folder: the run folder; created (with its parents) when it does not exist.
        tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package).

    Raises:
        MissingDependencyError: ``tensorboard=True`` and the ``tensorboard`` package is not installed.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with RunLogger(folder) as logger:
        ...     logger.log("train", {"step": 0, "epoch": 0, "loss": 0.75})
        ...     logger.log("train", {"step": 1, "epoch": 0, "loss": float("nan"), "lr": 0.01})
        ...     logger.records("train")
        [{'step': 0, 'epoch': 0, 'loss': 0.75}, {'step': 1, 'epoch': 0, 'loss': None, 'lr': 0.01}]
        >>> print(open(f"{folder}/train.csv").read(), end="")
        step,epoch,loss,lr
        0,0,0.75,
        1,0,nan,0.01
    """

    def __init__(self, folder: str | os.PathLike[str], *, tensorboard: bool = False) -> None:
        if not isinstance(tensorboard, bool):
            raise TypeError(message(_OWNER, "tensorboard", "a bool", tensorboard))
        self.folder = Path(folder)
        self.tensorboard = tensorboard
        self.folder.mkdir(parents=True, exist_ok=True)
        self._streams: dict[str, _Stream] = {}
        self._writer: Any = _summary_writer(self.folder / TENSORBOARD_FOLDER) if tensorboard else None
        self._closed = False

    def __repr__(self) -> str:
        return f"RunLogger({str(self.folder)!r}, tensorboard={self.tensorboard})"

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def path(self, stream: str, suffix: str = "jsonl") -> Path:
        """The file of ``stream``: ``<folder>/<stream>.jsonl`` (``suffix="jsonl"``) or ``.csv``."""
        _check_stream(stream)
        if suffix not in ("jsonl", "csv"):
            raise ValueError(message(_OWNER, "suffix", "'jsonl' or 'csv'", suffix))
        return self.folder / f"{stream}.{suffix}"

    def log(self, stream: str, record: Mapping[str, LogValue]) -> None:
        """Append ``record`` to ``stream``'s JSON-lines and CSV files (and TensorBoard when enabled).

        Args:
            stream: the stream's name: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` or ``-``.
            record: a non-empty mapping of string keys to int, float, str, bool or None values.

        Raises:
            ValueError: a bad stream name, an empty record or an empty key, or the logger is closed.
            TypeError: a key that is not a string or a value of another type.
        """
        state = self._stream(stream)
        clean = _clean_record(record)
        state.open()
        assert state.jsonl is not None and state.csv is not None
        state.jsonl.write(json.dumps(_json_safe(clean), allow_nan=False, ensure_ascii=False) + "\n")
        state.jsonl.flush()
        new_keys = [key for key in clean if state.columns is None or key not in state.columns]
        if state.columns is None:
            state.columns = new_keys
            _csv_writer(state.csv).writerow(new_keys)
        elif new_keys:
            state.csv.close()
            state.csv = None
            state.columns = _widen_csv(state.csv_path, state.columns, state.columns + new_keys)
            state.open()
            assert state.csv is not None
        _csv_writer(state.csv).writerow([_csv_cell(clean.get(key)) for key in state.columns])
        state.csv.flush()
        if self._writer is not None:
            self._add_scalars(stream, clean, state.count)
        state.count += 1

    def records(self, stream: str) -> list[dict[str, LogValue]]:
        """The records of ``stream``, in logging order, read back from its JSON-lines file.

        Non-finite floats come back as ``None``; a stream never logged has no records.

        Raises:
            CorruptFileError: a line of the file is not a JSON object (the message names the file and line).
        """
        path = self.path(stream, "jsonl")
        return _read_jsonl(path) if path.exists() else []

    def truncate(self, stream: str, keep: Callable[[dict[str, LogValue]], bool]) -> int:
        """Keep only the records of ``stream`` for which ``keep(record)`` is true; return how many were dropped.

        Both files are rewritten atomically. Used when a run resumes from a checkpoint, to drop what was
        logged after it (for example ``keep=lambda r: r["epoch"] <= checkpoint_epoch``). The CSV keeps its
        columns and cells; it is rebuilt from the JSON lines only when the two files disagree on the number
        of records (a crash between the two appends). TensorBoard event files are not rewritten: its
        viewer shows the resumed run's values from the same steps on top of the dropped ones.

        Raises:
            CorruptFileError: the JSON-lines file has a corrupt line.
        """
        state = self._stream(stream)
        state.close()
        records = self.records(stream)
        mask = [bool(keep(record)) for record in records]
        kept = [record for record, flag in zip(records, mask, strict=True) if flag]
        if state.count or state.jsonl_path.exists():
            text = "".join(json.dumps(_json_safe(r), allow_nan=False, ensure_ascii=False) + "\n" for r in kept)
            atomic_write(state.jsonl_path, lambda f: f.write(text.encode("utf-8")))
        header, rows = _read_csv(state.csv_path)
        if header is not None and len(rows) == len(records):
            kept_rows = [row for row, flag in zip(rows, mask, strict=True) if flag]
            _write_csv(state.csv_path, header, kept_rows)
        elif header is not None or records:
            state.columns = _rewrite_csv(state.csv_path, kept, header)
        state.count = len(kept)
        return len(records) - len(kept)

    def close(self) -> None:
        """Close every file (and the TensorBoard writer); calling it again does nothing."""
        for state in self._streams.values():
            state.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True

    def _stream(self, stream: str) -> _Stream:
        if self._closed:
            raise ValueError(f"{_OWNER}: the logger of {str(self.folder)!r} is closed.")
        state = self._streams.get(stream)
        if state is None:
            state = _Stream(self.path(stream, "jsonl"), self.path(stream, "csv"))
            self._streams[stream] = state
        return state

    def _add_scalars(self, stream: str, record: Mapping[str, LogValue], position: int) -> None:
        step = record.get("step")
        global_step = step if isinstance(step, int) and not isinstance(step, bool) else position
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{stream}/{key}", value, global_step=global_step)
        self._writer.flush()


def _summary_writer(log_dir: Path) -> Any:
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it; checked first for a clear message)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError("tensorboard", "tensorboard", "RunLogger(tensorboard=True)") from None
    return SummaryWriter(log_dir=str(log_dir))


def _check_stream(stream: Any) -> None:
    if not isinstance(stream, str):
        raise TypeError(message(_OWNER, "stream", "a str", stream))
    if not _STREAM_NAME.fullmatch(stream):
        raise ValueError(
            message(
                _OWNER, "stream", "a name of letters, digits, '_', '-' and '.' not starting with '.' or '-'", stream
            )
        )


def _clean_record(record: Any) -> dict[str, LogValue]:
    if not isinstance(record, Mapping):
        raise TypeError(message(_OWNER, "record", "a mapping of str to int, float, str, bool or None", record))
    if not record:
        raise ValueError(message(_OWNER, "record", "a non-empty mapping", record))
    clean: dict[str, LogValue] = {}
    for key, value in record.items():
        if not isinstance(key, str):
            raise TypeError(message(_OWNER, "record", "keyed by str", key))
        if not key:
            raise ValueError(message(_OWNER, "record", "keyed by non-empty strings", key))
        clean[key] = _clean_value(key, value)
    return clean


def _clean_value(key: str, value: Any) -> LogValue:
    if value is not None and not isinstance(value, (bool, int, float, str)) and _is_scalar(value):
        value = value.item()
    # Subclasses (numpy.float64, IntEnum, str enums) become the plain type, whose repr and str the CSV uses.
    if value is None:
        return None
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(message(_OWNER, f"record[{key!r}]", "an int, float, str, bool or None", value))


def _is_scalar(value: Any) -> bool:
    """A numpy scalar, a 0-d array or a one-element tensor: anything whose ``.item()`` is a Python scalar."""
    numel = getattr(value, "numel", None)
    if callable(numel):
        return bool(numel() == 1)
    size = getattr(value, "size", None)
    return isinstance(size, int) and size == 1 and callable(getattr(value, "item", None))


def _json_safe(record: Mapping[str, LogValue]) -> dict[str, LogValue]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _csv_cell(value: LogValue) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # 'nan', 'inf', '-inf' for non-finite values; the shortest exact form otherwise
    return str(value)


def _csv_writer(handle: IO[str]) -> Any:
    return csv.writer(handle, lineterminator="\n")


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as file:
        return sum(1 for line in file if line.strip())


def _end_with_newline(path: Path) -> None:
    """Finish a last line that a crash left without its newline, so the next record starts a line of its own."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as file:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")


def _read_jsonl(path: Path) -> list[dict[str, LogValue]]:
    records: list[dict[str, LogValue]] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptFileError(f"{path}: line {number} is not valid JSON ({exc.msg}): {line[:80]!r}") from None
            if not isinstance(record, dict):
                raise CorruptFileError(
                    f"{path}: line {number} is not a JSON object (got {type(record).__name__}): {line[:80]!r}"
                )
            records.append(record)
    return records


def _read_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8", newline="") as file:
        header = next(csv.reader(file), None)
    return header or None


def _read_csv(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    if not path.exists():
        return None, []
    with open(path, encoding="utf-8", newline="") as file:
        rows = [row for row in csv.reader(file) if row]
    return (rows[0], rows[1:]) if rows else (None, [])


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    buffer = io.StringIO()
    writer = _csv_writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def _widen_csv(path: Path, old: list[str], new: list[str]) -> list[str]:
    """Rewrite the CSV with header ``new`` (``old`` plus keys), giving the older rows empty cells for the new keys."""
    _, rows = _read_csv(path)
    padding = [""] * (len(new) - len(old))
    _write_csv(path, new, [row + padding for row in rows])
    return new


def _rewrite_csv(path: Path, records: Sequence[Mapping[str, LogValue]], columns: list[str] | None) -> list[str]:
    """Write the CSV anew from ``records`` (non-finite values already ``None``); return its columns."""
    header = list(columns or [])
    for record in records:
        header += [key for key in record if key not in header]
    _write_csv(path, header, ([_csv_cell(record.get(key)) for key in header] for record in records))
    return header
