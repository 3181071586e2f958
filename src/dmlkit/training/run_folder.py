"""Run folders: ``<out_dir>/<name>/`` holding ``config.json``, ``metrics.json`` and ``checkpoint.pt``.

Every file is written atomically (a temporary file in the same directory, then ``os.replace``), so a crash
never leaves a half-written file under the final name, and every file carries ``"format_version"``, which
loading checks.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_write
from ..errors import CorruptFileError
from .config import FORMAT_VERSION, TrainConfig
from .loop import TrainResult
from .models import MLP, build_model

__all__ = [
    "CHECKPOINT_KEYS",
    "atomic_write",
    "write_json",
    "create_run_folder",
    "save_run",
    "save_checkpoint",
    "load_checkpoint",
    "load_json",
    "model_from_checkpoint",
]

#: the entries every checkpoint holds.
CHECKPOINT_KEYS = ("format_version", "model_state", "optimizer_state", "config", "model_args")


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` (with ``"format_version"`` first) as indented JSON, atomically."""
    body = {"format_version": FORMAT_VERSION, **{k: v for k, v in data.items() if k != "format_version"}}
    text = json.dumps(body, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON file written by :func:`write_json`, checking its format version.

    Raises:
        CorruptFileError: the file is not valid JSON, not an object, or of another format version.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a valid dmlkit JSON file (truncated or corrupt): {exc}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    _check_version(path, data)
    return data


def create_run_folder(out_dir: str | os.PathLike[str], name: str | None = None) -> Path:
    """Create and return a new folder ``out_dir/name`` (default name: the local time, ``YYYYmmdd-HHMMSS``).

    An existing folder is never reused: ``-2``, ``-3``, ... is appended until the name is free.
    """
    base = name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        folder = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"No free run folder name for {base!r} in {root}.")  # pragma: no cover


def save_checkpoint(path: str | os.PathLike[str], result: TrainResult, config: TrainConfig) -> Path:
    """Write the model and optimizer state, the resolved configuration and the model's arguments."""
    from .loop import model_spec

    model_args = model_spec(config, result.num_input_shape)
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "model_state": result.model.state_dict(),
        "optimizer_state": result.optimizer.state_dict(),
        "loss_state": result.loss_fn.state_dict(),
        "config": config.to_dict(),
        "model_args": model_args,
    }
    return atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with only tensors and plain data unpickled.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file is truncated, corrupt, not a dmlkit checkpoint, or of another format version.
    """
    raw = Path(path).read_bytes()
    try:
        checkpoint = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as exc:  # malformed bytes surface as many different exception types inside torch.load
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            f"{path}: cannot read the checkpoint; the file is truncated or corrupt ({len(raw)} bytes): {detail}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CorruptFileError(f"{path}: not a dmlkit checkpoint (expected a dict, got {type(checkpoint).__name__}).")
    _check_version(path, checkpoint)
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CorruptFileError(f"{path}: not a dmlkit checkpoint; missing {', '.join(missing)}.")
    return checkpoint


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> nn.Module:
    """Rebuild the trained embedding network (in eval mode) from a loaded checkpoint.

    ``model_args`` holds :func:`~dmlkit.training.models.build_model`'s arguments (``name``, ``in_shape``,
    ``embedding_size``, ``params``); checkpoints of earlier releases hold an :class:`MLP`'s arguments.
    """
    args = checkpoint["model_args"]
    if "name" in args:
        model = build_model(args["name"], args["in_shape"], args["embedding_size"], args["params"])
    else:
        model = MLP(**args)
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def save_run(folder: str | os.PathLike[str], config: TrainConfig, result: TrainResult) -> dict[str, Path]:
    """Write ``config.json``, ``metrics.json`` and ``checkpoint.pt`` into ``folder``; return their paths."""
    root = Path(folder)
    metrics = {
        "before": result.before,
        "after": result.after,
        "raw_input": result.raw_input,
        "history": result.history,
        "num_train": result.num_train,
        "num_test": result.num_test,
        "seconds": result.seconds,
        "versions": _versions(),
    }
    return {
        "config": write_json(root / "config.json", config.to_dict()),
        "metrics": write_json(root / "metrics.json", metrics),
        "checkpoint": save_checkpoint(root / "checkpoint.pt", result, config),
    }


def _check_version(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    version = data.get("format_version")
    if version is None:
        raise CorruptFileError(f"{path}: no format_version; not written by dmlkit.")
    if version != FORMAT_VERSION:
        raise CorruptFileError(
            f"{path}: format_version {version!r} is not supported (this dmlkit reads version {FORMAT_VERSION})."
        )


def _versions() -> dict[str, str]:
    import numpy

    from .. import __version__

    return {
        "dmlkit": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
