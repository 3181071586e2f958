"""The class-weight base: parameter creation, label checks, weight regularisation, size aliases."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances import DotProductSimilarity
from dmlkit.losses.class_weights import BaseClassWeightLoss, resolve_class_sizes
from dmlkit.regularizers import LpRegularizer
from dmlkit.types import TermKind, Terms


class PlainSoftmaxLoss(BaseClassWeightLoss):
    """Softmax cross-entropy over dot products with one weight row per class (a test double)."""

    def __init__(self, num_classes: int, embedding_size: int, **kwargs: object) -> None:
        kwargs.setdefault("distance", DotProductSimilarity(normalize_embeddings=False))
        super().__init__(num_classes, embedding_size, **kwargs)  # type: ignore[arg-type]
        self.W = self.new_weights(num_classes, embedding_size)

    def class_weights(self) -> Tensor:
        return self.W

    def compute_terms(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> Mapping[str, Terms]:  # type: ignore[no-untyped-def]
        losses = F.cross_entropy(self.get_logits(embeddings), labels, reduction="none")
        return {"loss": Terms(losses, torch.arange(len(labels)), TermKind.ELEMENT)}


def test_value_and_weight_penalty_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    loss = PlainSoftmaxLoss(3, 4, weight_regularizer=LpRegularizer(), weight_reg_weight=0.5).double()
    emb, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(emb @ loss.W.T, labels) + 0.5 * loss.W.norm(dim=1).mean()
    assert torch.allclose(loss(emb, labels), expected)


def test_weight_init_func_fills_the_new_parameter() -> None:
    loss = PlainSoftmaxLoss(3, 4, weight_init_func=torch.nn.init.ones_)
    assert isinstance(loss.W, torch.nn.Parameter) and torch.equal(loss.W, torch.ones(3, 4))
    assert [name for name, _ in loss.named_parameters()] == ["W"]


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_the_classes_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"PlainSoftmaxLoss: `labels` must be class indices in \[0, 3\), got {bad}"):
        PlainSoftmaxLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, bad]))


def test_labels_and_sizes_are_required() -> None:
    with pytest.raises(ValueError, match="`labels` must be given"):
        PlainSoftmaxLoss(3, 4)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer, got 0"):
        PlainSoftmaxLoss(0, 4)
    with pytest.raises(ValueError, match="`ref_emb` must be None"):
        labels = torch.tensor([0, 1])
        PlainSoftmaxLoss(3, 4)(torch.randn(2, 4), labels, ref_emb=torch.randn(2, 4), ref_labels=labels.clone())


def test_size_aliases_resolve_and_conflicts_are_errors() -> None:
    assert resolve_class_sizes("X", None, None, K__num_classes=5, l__embedding_size=8) == (5, 8)
    assert resolve_class_sizes("X", 5, 8) == (5, 8)
    with pytest.raises(ValueError, match=r"X: `l` must be the same as `embedding_size` \(8\) when both are given"):
        resolve_class_sizes("X", 5, 8, l__embedding_size=9)
    with pytest.raises(TypeError, match="X: `num_classes` is required"):
        resolve_class_sizes("X", None, 8)
