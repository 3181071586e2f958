from __future__ import annotations

import re

import pytest
import torch

from dmlkit.reducers import (
    AvgNonZeroReducer,
    MeanReducer,
    MultipleReducers,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)
from dmlkit.types import TermKind, Terms
from tests.reducers.groups import make_group
from tests.reference.reducers import mean, threshold_mean, total


def _groups() -> tuple[dict[str, Terms], torch.Tensor, torch.Tensor]:
    pos = make_group(TermKind.POS_PAIR, 0)
    neg = make_group(TermKind.NEG_PAIR, 1)
    return {"pos_loss": pos.terms, "neg_loss": neg.terms}, pos.embeddings, pos.labels


def test_each_group_uses_its_reducer_and_the_results_are_summed() -> None:
    groups, emb, labels = _groups()
    reducer = MultipleReducers({"pos_loss": SumReducer(), "neg_loss": ThresholdReducer(low=0.5)})
    expected = total(groups["pos_loss"].values.tolist()) + threshold_mean(groups["neg_loss"].values.tolist(), 0.5)
    assert reducer(groups, emb, labels).item() == pytest.approx(expected, rel=1e-12)


def test_other_groups_use_the_default_reducer() -> None:
    groups, emb, labels = _groups()
    pos, neg = groups["pos_loss"].values.tolist(), groups["neg_loss"].values.tolist()
    assert MultipleReducers({"pos_loss": SumReducer()})(groups, emb, labels).item() == pytest.approx(
        total(pos) + mean(neg), rel=1e-12
    )
    with_default = MultipleReducers({"pos_loss": SumReducer()}, default_reducer=AvgNonZeroReducer())
    assert with_default(groups, emb, labels).item() == pytest.approx(total(pos) + threshold_mean(neg, low=0), rel=1e-12)


def test_default_is_a_fresh_mean_reducer() -> None:
    first, second = MultipleReducers({}), MultipleReducers({})
    assert isinstance(first.default_reducer, MeanReducer)
    assert first.default_reducer is not second.default_reducer


def test_one_group_without_a_name_uses_the_default() -> None:
    groups, emb, labels = _groups()
    reducer = MultipleReducers({"pos_loss": SumReducer()}, default_reducer=SumReducer())
    assert reducer(groups["neg_loss"], emb, labels).item() == pytest.approx(
        total(groups["neg_loss"].values.tolist()), rel=1e-12
    )


def test_reducers_are_submodules() -> None:
    inner = PerAnchorReducer()
    reducer = MultipleReducers({"pos_loss": inner})
    assert isinstance(reducer.reducers, torch.nn.ModuleDict)
    assert reducer.reducers["pos_loss"] is inner
    assert inner in list(reducer.modules())


def test_already_reduced_and_empty_groups() -> None:
    groups, emb, labels = _groups()
    groups = {
        **groups,
        "embedding_reg_loss": Terms.reduced(torch.tensor(0.75, dtype=torch.float64)),
        "unused": Terms(emb.new_zeros(0), torch.zeros(0, dtype=torch.long), TermKind.TRIPLET),
    }
    reducer = MultipleReducers({"pos_loss": SumReducer()})
    pos, neg = groups["pos_loss"].values.tolist(), groups["neg_loss"].values.tolist()
    assert reducer(groups, emb, labels).item() == pytest.approx(total(pos) + mean(neg) + 0.75, rel=1e-12)


def test_gradient_reaches_every_group() -> None:
    groups, emb, labels = _groups()
    loss = MultipleReducers({"pos_loss": SumReducer()})(groups, emb, labels)
    grads = torch.autograd.grad(loss, [groups["pos_loss"].values, groups["neg_loss"].values])
    assert torch.equal(grads[0], torch.ones_like(grads[0]))
    n = groups["neg_loss"].values.numel()
    torch.testing.assert_close(grads[1], torch.full((n,), 1 / n, dtype=torch.float64))


def test_invalid_arguments() -> None:
    with pytest.raises(
        TypeError, match=re.escape("MultipleReducers: `reducers` must be a dict of name -> reducer, got list.")
    ):
        MultipleReducers([SumReducer()])  # type: ignore[arg-type]
    expected = "MultipleReducers: `reducers['pos_loss']` must be a dmlkit reducer (e.g. MeanReducer()), got str."
    with pytest.raises(TypeError, match=re.escape(expected)):
        MultipleReducers({"pos_loss": "sum"})  # type: ignore[dict-item]
    expected = "MultipleReducers: `default_reducer` must be a dmlkit reducer (e.g. MeanReducer()), got type."
    with pytest.raises(TypeError, match=re.escape(expected)):
        MultipleReducers({}, default_reducer=MeanReducer)  # type: ignore[arg-type]


def test_pml_parity() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.reducers", reason="PML parity needs PML")
    groups, emb, labels = _groups()
    pos, neg = make_group(TermKind.POS_PAIR, 0), make_group(TermKind.NEG_PAIR, 1)
    loss_dict = {"pos_loss": pos.pml_loss_dict()["loss"], "neg_loss": neg.pml_loss_dict()["loss"]}
    ours = MultipleReducers({"pos_loss": ThresholdReducer(low=0.4)}, default_reducer=PerAnchorReducer())
    theirs = pml.MultipleReducers({"pos_loss": pml.ThresholdReducer(low=0.4)}, default_reducer=pml.PerAnchorReducer())
    torch.testing.assert_close(ours(groups, emb, labels), theirs(loss_dict, emb, labels), rtol=0, atol=1e-6)
