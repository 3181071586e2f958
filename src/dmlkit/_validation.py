"""Input checks shared by every family, with one message template.

Every message reads ``"{owner}: `{arg}` must be {rule}, got {value!r}."`` so users always learn which
object complained, which argument was wrong, what was expected and what they passed.
"""

from __future__ import annotations

import difflib
import enum
import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "at_least",
    "message",
    "check_range",
    "check_choice",
    "check_type",
    "check_embeddings",
    "check_labels",
    "check_reference",
    "close_matches_hint",
    "Described",
    "all_finite",
]

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


def message(owner: str, arg: str, rule: str, value: Any) -> str:
    """Format the standard error message."""
    return f"{owner}: `{arg}` must be {rule}, got {value!r}."


def _describe_tensor(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


class Described:
    """Wraps a description so that ``!r`` prints it without quotes in the message template."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_Described = Described


def check_type(owner: str, arg: str, value: Any, types: type | tuple[type, ...], rule: str) -> None:
    if not isinstance(value, types):
        raise TypeError(message(owner, arg, rule, _Described(type(value).__name__)))


def check_range(
    owner: str,
    arg: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Check that a number lies in ``[low, high]`` (or the open variant), raising ValueError otherwise.

    Any real number is accepted, numpy's scalars included (hyperparameters often come from numpy grids);
    booleans are not numbers here.
    """
    kind = "an integer" if integer else "a number"
    if not is_real_number(value, integer=integer):
        raise TypeError(message(owner, arg, kind, value))
    if not integer and math.isnan(value):
        raise ValueError(message(owner, arg, "a number, not NaN", value))
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high}")
    rule = f"{kind} " + " and ".join(parts)
    if low is not None and (value < low or (not low_inclusive and value == low)):
        raise ValueError(message(owner, arg, rule, value))
    if high is not None and (value > high or (not high_inclusive and value == high)):
        raise ValueError(message(owner, arg, rule, value))


def is_real_number(value: Any, integer: bool = False) -> bool:
    """Whether ``value`` is a real (or integral) number: Python's or numpy's, but not a boolean.

    Example:
        >>> import numpy as np
        >>> is_real_number(np.float32(0.5)), is_real_number(np.int64(3), integer=True), is_real_number(True)
        (True, True, False)
    """
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, numbers.Integral if integer else numbers.Real)


def at_least(owner: str, arg: str, value: T, low: float) -> T:
    """``value`` after checking it is a number ``>= low`` (an integer when ``low`` is an int).

    Example:
        >>> at_least("Trainer", "batch_size", 8, 1)
        8
    """
    check_range(owner, arg, value, low=low, integer=isinstance(low, int))
    return value


def close_matches_hint(name: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def check_choice(owner: str, arg: str, value: Any, choices: type[E]) -> E:
    """Convert ``value`` (an enum member or its string value) to a member of ``choices``.

    Typos are rejected with the list of valid values, never silently mapped to a default.
    """
    if isinstance(value, choices):
        return value
    valid = [member.value for member in choices]
    if isinstance(value, str) and value in valid:
        return choices(value)
    hint = close_matches_hint(value, valid) if isinstance(value, str) else ""
    raise ValueError(message(owner, arg, "one of " + ", ".join(repr(v) for v in valid), value) + hint)


def check_embeddings(owner: str, embeddings: Any, arg: str = "embeddings") -> None:
    """Embeddings must be a finite 2-D floating-point tensor of shape (batch_size, embedding_size)."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(message(owner, arg, "a torch.Tensor", _Described(type(embeddings).__name__)))
    if embeddings.ndim != 2:
        raise ValueError(
            message(
                owner,
                arg,
                "a 2-D tensor of shape (batch_size, embedding_size)",
                _Described(_describe_tensor(embeddings)),
            )
        )
    if not embeddings.is_floating_point():
        raise TypeError(
            message(owner, arg, "a floating-point tensor (call .float())", _Described(_describe_tensor(embeddings)))
        )
    if embeddings.numel() and not all_finite(embeddings):
        bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
        raise ValueError(
            message(
                owner,
                arg,
                "finite (no NaN or Inf); check the model's outputs and learning rate",
                _Described(f"{bad} row(s) containing NaN or Inf"),
            )
        )


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite. One reduction decides in the usual case: a finite sum means no NaN or
    Inf; only a non-finite sum (a bad entry, or finite values overflowing) needs the entry-wise test."""
    with torch.no_grad():
        if bool(torch.isfinite(x.sum())):
            return True
        return bool(torch.isfinite(x).all())


def check_labels(owner: str, labels: Any, size: int, arg: str = "labels", embeddings_arg: str = "embeddings") -> None:
    """Labels must be a 1-D integer tensor with one entry per embedding."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(message(owner, arg, "a torch.Tensor", _Described(type(labels).__name__)))
    if labels.ndim != 1:
        raise ValueError(
            message(owner, arg, "a 1-D tensor of shape (batch_size,)", _Described(_describe_tensor(labels)))
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(message(owner, arg, "an integer tensor (call .long())", _Described(_describe_tensor(labels))))
    if labels.shape[0] != size:
        raise ValueError(
            message(
                owner,
                arg,
                f"of the same length as `{embeddings_arg}` ({size})",
                _Described(f"length {labels.shape[0]}"),
            )
        )


def check_reference(
    owner: str,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    ref_emb: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
) -> None:
    """Validate an optional reference set against the query batch."""
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError(
                message(
                    owner, "ref_labels", "given only together with `ref_emb`", _Described("ref_labels without ref_emb")
                )
            )
        return
    check_embeddings(owner, ref_emb, "ref_emb")
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(
            message(
                owner,
                "ref_emb",
                f"of embedding size {embeddings.shape[1]} like `embeddings`",
                _Described(f"embedding size {ref_emb.shape[1]}"),
            )
        )
    if ref_emb.device != embeddings.device:
        raise ValueError(
            message(
                owner,
                "ref_emb",
                f"on the same device as `embeddings` ({embeddings.device})",
                _Described(str(ref_emb.device)),
            )
        )
    if labels is not None and ref_labels is None:
        raise ValueError(message(owner, "ref_labels", "given when `ref_emb` and `labels` are given", None))
    if ref_labels is not None:
        check_labels(owner, ref_labels, ref_emb.shape[0], "ref_labels", "ref_emb")
