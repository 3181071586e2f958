"""dmlkit._validation: one message template, exact messages for every check."""

from __future__ import annotations

import enum
import re

import pytest
import torch

from dmlkit._validation import (
    check_choice,
    check_embeddings,
    check_labels,
    check_range,
    check_reference,
    check_type,
    close_matches_hint,
    message,
)


class Color(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


def _exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_message_template() -> None:
    assert message("Owner", "arg", "positive", -1) == "Owner: `arg` must be positive, got -1."
    assert message("Owner", "name", "one of 'a'", "b") == "Owner: `name` must be one of 'a', got 'b'."


# --------------------------------------------------------------------------------------------- check_range


@pytest.mark.parametrize(
    "kwargs,value,text",
    [
        ({"low": 0, "high": 1}, 1.5, "O: `x` must be a number >= 0 and <= 1, got 1.5."),
        ({"low": 0, "high": 1}, -0.5, "O: `x` must be a number >= 0 and <= 1, got -0.5."),
        ({"low": 0, "low_inclusive": False}, 0, "O: `x` must be a number > 0, got 0."),
        ({"high": 1, "high_inclusive": False}, 1, "O: `x` must be a number < 1, got 1."),
        ({"low": 1, "integer": True}, 0, "O: `x` must be an integer >= 1, got 0."),
        ({"low": 0}, float("nan"), "O: `x` must be a number, not NaN, got nan."),
    ],
)
def test_check_range_value_errors(kwargs: dict, value: float, text: str) -> None:
    with pytest.raises(ValueError, match=_exact(text)):
        check_range("O", "x", value, **kwargs)


@pytest.mark.parametrize(
    "kwargs,value,text",
    [
        ({"low": 0}, True, "O: `x` must be a number, got True."),
        ({"low": 0}, "1", "O: `x` must be a number, got '1'."),
        ({"low": 0}, None, "O: `x` must be a number, got None."),
        ({"low": 0, "integer": True}, 1.5, "O: `x` must be an integer, got 1.5."),
        ({"low": 0, "integer": True}, 2.0, "O: `x` must be an integer, got 2.0."),
    ],
)
def test_check_range_type_errors(kwargs: dict, value: object, text: str) -> None:
    with pytest.raises(TypeError, match=_exact(text)):
        check_range("O", "x", value, **kwargs)


@pytest.mark.parametrize(
    "kwargs,value",
    [
        ({"low": 0, "high": 1}, 0),
        ({"low": 0, "high": 1}, 1),
        ({"low": 0, "high": 1}, 0.5),
        ({"low": 0, "low_inclusive": False}, 1e-12),
        ({"low": 1, "integer": True}, 3),
        ({}, -5.0),
        ({"low": 0}, float("inf")),
    ],
)
def test_check_range_accepts(kwargs: dict, value: float) -> None:
    check_range("O", "x", value, **kwargs)


# --------------------------------------------------------------------------------------------- check_choice


def test_check_choice_converts_strings_and_members() -> None:
    assert check_choice("O", "color", "green", Color) is Color.GREEN
    assert check_choice("O", "color", Color.BLUE, Color) is Color.BLUE


def test_check_choice_rejects_typos_with_valid_values_and_hint() -> None:
    with pytest.raises(
        ValueError,
        match=_exact("O: `color` must be one of 'red', 'green', 'blue', got 'gren'. Did you mean 'green', 'red'?"),
    ):
        check_choice("O", "color", "gren", Color)


def test_check_choice_without_close_match() -> None:
    with pytest.raises(ValueError, match=_exact("O: `color` must be one of 'red', 'green', 'blue', got 'purple'.")):
        check_choice("O", "color", "purple", Color)
    with pytest.raises(ValueError, match=_exact("O: `color` must be one of 'red', 'green', 'blue', got 3.")):
        check_choice("O", "color", 3, Color)


def test_check_choice_is_case_sensitive() -> None:
    with pytest.raises(ValueError, match=re.escape("got 'RED'")):
        check_choice("O", "color", "RED", Color)


def test_close_matches_hint() -> None:
    assert close_matches_hint("semi-hard", ["all", "hard", "semihard", "easy"]).startswith(" Did you mean 'semihard'")
    assert close_matches_hint("zzz", ["all", "hard"]) == ""


# --------------------------------------------------------------------------------------------- check_type


def test_check_type() -> None:
    check_type("O", "x", "s", str, "a string")
    check_type("O", "x", 1, (int, float), "a number")
    with pytest.raises(TypeError, match=_exact("O: `x` must be a string, got int.")):
        check_type("O", "x", 3, str, "a string")


# --------------------------------------------------------------------------------------------- check_embeddings


def test_check_embeddings_accepts() -> None:
    check_embeddings("O", torch.zeros(3, 2))
    check_embeddings("O", torch.zeros(3, 2, dtype=torch.float16))
    check_embeddings("O", torch.zeros(0, 2))


def test_check_embeddings_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=_exact("O: `embeddings` must be a torch.Tensor, got list.")):
        check_embeddings("O", [[1.0, 2.0]])


def test_check_embeddings_wrong_ndim() -> None:
    with pytest.raises(
        ValueError,
        match=_exact(
            "O: `emb` must be a 2-D tensor of shape (batch_size, embedding_size), "
            "got tensor of shape (2, 3, 4) and dtype torch.float32."
        ),
    ):
        check_embeddings("O", torch.zeros(2, 3, 4), "emb")


def test_check_embeddings_integer() -> None:
    with pytest.raises(
        TypeError,
        match=_exact(
            "O: `embeddings` must be a floating-point tensor (call .float()), "
            "got tensor of shape (3, 2) and dtype torch.int64."
        ),
    ):
        check_embeddings("O", torch.zeros(3, 2, dtype=torch.long))


def test_check_embeddings_non_finite_counts_rows() -> None:
    x = torch.zeros(5, 3)
    x[1, 0] = float("nan")
    x[1, 2] = float("inf")
    x[4, 1] = -float("inf")
    with pytest.raises(
        ValueError,
        match=_exact(
            "O: `embeddings` must be finite (no NaN or Inf); check the model's outputs and learning rate, "
            "got 2 row(s) containing NaN or Inf."
        ),
    ):
        check_embeddings("O", x)


# --------------------------------------------------------------------------------------------- check_labels


def test_check_labels_accepts_integer_dtypes() -> None:
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        check_labels("O", torch.zeros(3, dtype=dtype), 3)


def test_check_labels_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=_exact("O: `labels` must be a torch.Tensor, got list.")):
        check_labels("O", [0, 1], 2)


def test_check_labels_not_1d() -> None:
    with pytest.raises(
        ValueError,
        match=_exact(
            "O: `labels` must be a 1-D tensor of shape (batch_size,), got tensor of shape (3, 1) and dtype torch.int64."
        ),
    ):
        check_labels("O", torch.zeros(3, 1, dtype=torch.long), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_check_labels_not_integer(dtype: torch.dtype) -> None:
    with pytest.raises(
        TypeError,
        match=_exact(
            f"O: `labels` must be an integer tensor (call .long()), got tensor of shape (3,) and dtype {dtype}."
        ),
    ):
        check_labels("O", torch.zeros(3, dtype=dtype), 3)


def test_check_labels_wrong_length() -> None:
    with pytest.raises(
        ValueError, match=_exact("O: `ref_labels` must be of the same length as `ref_emb` (4), got length 3.")
    ):
        check_labels("O", torch.zeros(3, dtype=torch.long), 4, "ref_labels", "ref_emb")


# --------------------------------------------------------------------------------------------- check_reference


def test_check_reference_accepts() -> None:
    emb, labels = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    check_reference("O", emb, labels, None, None)
    check_reference("O", emb, labels, torch.zeros(5, 2), torch.zeros(5, dtype=torch.long))
    # without labels (self-supervised style), the reference needs no labels either
    check_reference("O", emb, None, torch.zeros(5, 2), None)


def test_check_reference_errors() -> None:
    emb, labels = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=_exact("O: `ref_labels` must be given only together with `ref_emb`, got ref_labels without ref_emb."),
    ):
        check_reference("O", emb, labels, None, labels)
    with pytest.raises(
        ValueError, match=_exact("O: `ref_labels` must be given when `ref_emb` and `labels` are given, got None.")
    ):
        check_reference("O", emb, labels, torch.zeros(4, 2), None)
    with pytest.raises(
        ValueError, match=_exact("O: `ref_emb` must be of embedding size 2 like `embeddings`, got embedding size 3.")
    ):
        check_reference("O", emb, labels, torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        ValueError, match=_exact("O: `ref_labels` must be of the same length as `ref_emb` (4), got length 3.")
    ):
        check_reference("O", emb, labels, torch.zeros(4, 2), labels)
    with pytest.raises(ValueError, match=re.escape("O: `ref_emb` must be a 2-D tensor")):
        check_reference("O", emb, labels, torch.zeros(4), labels)


def test_numpy_scalars_are_numbers_and_numpy_booleans_are_not() -> None:
    import numpy as np

    from dmlkit._validation import check_range

    check_range("X", "margin", np.float32(0.5), low=0)
    check_range("X", "size", np.int64(3), low=1, integer=True)
    with pytest.raises(TypeError, match="must be an integer"):
        check_range("X", "size", np.float64(3.0), low=1, integer=True)
    with pytest.raises(TypeError, match="must be a number"):
        check_range("X", "margin", np.bool_(True))


def test_hyperparameters_from_numpy_build_working_losses() -> None:
    """Grids of hyperparameters often come from numpy: they are accepted wherever Python numbers are."""
    import numpy as np

    from dmlkit.evaluation import AccuracyCalculator
    from dmlkit.losses import ArcFaceLoss, MultipleLosses, TripletMarginLoss

    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    triplet = TripletMarginLoss(margin=np.float64(0.2))
    assert torch.equal(triplet(emb, labels), TripletMarginLoss(margin=0.2)(emb, labels))
    arcface = ArcFaceLoss(np.int64(4), np.int64(4), margin=np.float32(28.6))
    assert arcface.num_classes == 4 and type(arcface.num_classes) is int and arcface.W.shape == (4, 4)
    combined = MultipleLosses([triplet], weights=[np.float32(0.5)])
    torch.testing.assert_close(combined(emb, labels), 0.5 * triplet(emb, labels))
    assert AccuracyCalculator(k=np.int64(3)).k == 3
