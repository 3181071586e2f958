"""EmbeddingsAlreadyPackagedAsTriplets: the layout, its errors and PML equality."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.embeddings_already_packaged_as_triplets import EmbeddingsAlreadyPackagedAsTriplets
from dmlkit.types import Triplets


def _packed(num_triplets: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(3 * num_triplets, 5, generator=g, dtype=torch.float64)
    anchor_labels = torch.randint(0, 4, (num_triplets,), generator=g)
    labels = torch.stack([anchor_labels, anchor_labels, (anchor_labels + 1) % 4], dim=1).flatten()
    return emb, labels


@pytest.mark.parametrize("num_triplets", [0, 1, 5])
def test_consecutive_rows_form_the_triplets(num_triplets: int) -> None:
    emb, labels = _packed(num_triplets)
    out = EmbeddingsAlreadyPackagedAsTriplets()(emb, labels)
    assert isinstance(out, Triplets)
    expected = [(3 * i, 3 * i + 1, 3 * i + 2) for i in range(num_triplets)]
    assert list(zip(*(t.tolist() for t in out), strict=True)) == expected
    assert all(t.dtype == torch.long for t in out)


def test_labels_are_not_checked_against_the_layout() -> None:
    emb, _ = _packed(2)
    out = EmbeddingsAlreadyPackagedAsTriplets()(emb, torch.zeros(6, dtype=torch.long))
    assert out.anchors.tolist() == [0, 3]


@pytest.mark.parametrize("size", [1, 4, 8])
def test_batch_size_must_be_a_multiple_of_three(size: int) -> None:
    emb = torch.randn(size, 3)
    expected = (
        "EmbeddingsAlreadyPackagedAsTriplets: `embeddings` must be consecutive (anchor, positive, negative) rows, "
        f"so the batch size must be a multiple of 3, got batch size {size}."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        EmbeddingsAlreadyPackagedAsTriplets()(emb, torch.zeros(size, dtype=torch.long))


def test_a_reference_set_is_rejected() -> None:
    emb, labels = _packed(2)
    expected = (
        "EmbeddingsAlreadyPackagedAsTriplets: `ref_emb` must be None (the positives and negatives are rows of "
        "`embeddings`), got a tensor of shape (6, 5)."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        EmbeddingsAlreadyPackagedAsTriplets()(emb, labels, emb, labels)
    with pytest.raises(ValueError, match=re.escape("`ref_labels` must be given only together with `ref_emb`")):
        EmbeddingsAlreadyPackagedAsTriplets()(emb, labels, None, labels)


def test_inputs_are_validated() -> None:
    with pytest.raises(
        ValueError, match=re.escape("EmbeddingsAlreadyPackagedAsTriplets: `labels` must be of the same length")
    ):
        EmbeddingsAlreadyPackagedAsTriplets()(torch.randn(6, 2), torch.zeros(5, dtype=torch.long))


# --------------------------------------------------------------------------------------------- PML


def test_equal_to_pml_and_loss_parity() -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for num_triplets in (1, 4, 7):
        emb, labels = _packed(num_triplets, seed=num_triplets)
        ours = EmbeddingsAlreadyPackagedAsTriplets()(emb, labels)
        theirs = pml_miners.EmbeddingsAlreadyPackagedAsTriplets()(emb, labels)
        for x, y in zip(ours, theirs, strict=True):
            assert torch.equal(x, y)
        loss = TripletMarginLoss(margin=1.0)(emb, labels, ours)
        assert loss > 0
        torch.testing.assert_close(
            loss, pml_losses.TripletMarginLoss(margin=1.0)(emb, labels, theirs), rtol=0, atol=1e-6
        )
