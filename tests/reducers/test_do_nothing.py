from __future__ import annotations

import pytest
import torch

from dmlkit.reducers import DoNothingReducer
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import make_group


def test_returns_the_mapping_unchanged() -> None:
    g = make_group(TermKind.TRIPLET, 0)
    groups = {"loss": g.terms, "embedding_reg_loss": Terms.reduced(torch.tensor(1.0))}
    out = DoNothingReducer()(groups, g.embeddings, g.labels)
    assert out is groups
    assert out["loss"] is g.terms


def test_returns_one_group_unchanged() -> None:
    g = make_group(TermKind.POS_PAIR, 1)
    assert DoNothingReducer()(g.terms, g.embeddings) is g.terms


def test_empty_group_is_returned_as_is() -> None:
    empty = Terms(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert DoNothingReducer()(empty, torch.zeros(3, 2)) is empty


def test_reduce_is_not_a_reduction() -> None:
    with pytest.raises(TypeError, match="DoNothingReducer: terms are returned un-reduced"):
        DoNothingReducer().reduce(Terms(torch.ones(2), torch.arange(2)), torch.zeros(2, 2), None)


def test_pml_parity() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    g = make_group(TermKind.NEG_PAIR, 2)
    loss_dict = g.pml_loss_dict()
    assert pml.DoNothingReducer()(loss_dict, g.embeddings, g.labels) is loss_dict
    out = DoNothingReducer()({"loss": g.terms}, g.embeddings, g.labels)
    assert torch.equal(out["loss"].values, loss_dict["loss"]["losses"])
    assert torch.equal(out["loss"].anchors, loss_dict["loss"]["indices"][0])


def test_groups_answer_pml_keys_from_a_loss() -> None:
    """Code written for PML reads out[name]["losses"] and out[name]["reduction_type"]."""
    from dmlkit.losses import ContrastiveLoss, NormalizedSoftmaxLoss

    emb = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    out = ContrastiveLoss(reducer=DoNothingReducer())(emb, labels)
    assert out["pos_loss"]["reduction_type"] == "pos_pair" and out["neg_loss"]["reduction_type"] == "neg_pair"
    assert torch.equal(out["pos_loss"]["losses"], out["pos_loss"].values)
    with pytest.raises(KeyError, match="keep only their anchors"):
        out["pos_loss"]["indices"]
    element = NormalizedSoftmaxLoss(3, 3, reducer=DoNothingReducer())(emb, labels)["loss"]
    assert element["reduction_type"] == "element" and torch.equal(element["indices"], torch.arange(8))
    with pytest.raises(KeyError, match="no key 'loss'"):
        element["loss"]
