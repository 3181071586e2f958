"""MultipleLosses against weighted sums computed by hand, an oracle, errors and PML."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.losses import TripletMarginLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import MeanReducer
from dmlkit.wrappers import CrossBatchMemory, MultipleLosses
from tests.reference import triplet as tref


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def test_list_weighted_sum_matches_oracle() -> None:
    emb, labels = _batch(0)
    combined = MultipleLosses(
        [TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.6, reducer=MeanReducer())], weights=[0.3, 2.0]
    )
    rows, labs = emb.tolist(), labels.tolist()
    values_a = tref.triplet_values(rows, tref.all_triplets(labs), 0.2)
    values_b = tref.triplet_values(rows, tref.all_triplets(labs), 0.6)
    expected = 0.3 * tref.avg_non_zero(values_a) + 2.0 * sum(values_b) / len(values_b)
    assert combined(emb, labels).item() == pytest.approx(expected, abs=1e-10)


def test_default_weights_are_one() -> None:
    emb, labels = _batch(1)
    first, second = TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.5)
    assert MultipleLosses([first, second]).weights == [1, 1]
    assert MultipleLosses({"a": first, "b": second}).weights == {"a": 1, "b": 1}
    value = MultipleLosses([first, second])(emb, labels)
    assert value.item() == (first(emb, labels) + second(emb, labels)).item()


def test_dict_with_miners_for_some_losses() -> None:
    emb, labels = _batch(2)
    plain, mined = TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.3)
    miner = TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
    combined = MultipleLosses(
        {"plain": plain, "mined": mined}, miners={"mined": miner}, weights={"mined": 0.5, "plain": 1.5}
    )
    expected = 1.5 * plain(emb, labels) + 0.5 * mined(emb, labels, miner(emb, labels))
    assert combined(emb, labels).item() == pytest.approx(expected.item(), abs=1e-12)
    # a miner entry of None in a dict means no miner
    with_none = MultipleLosses({"plain": plain, "mined": mined}, miners={"plain": None, "mined": miner})
    assert with_none(emb, labels).item() == pytest.approx(
        (plain(emb, labels) + mined(emb, labels, miner(emb, labels))).item(), abs=1e-12
    )


def test_list_with_none_miner() -> None:
    emb, labels = _batch(3)
    first, second = TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.4)
    miner = TripletMarginMiner(margin=0.4, type_of_triplets="hard")
    combined = MultipleLosses([first, second], miners=[None, miner], weights=[2, -1])
    expected = 2 * first(emb, labels) - second(emb, labels, miner(emb, labels))
    assert combined(emb, labels).item() == pytest.approx(expected.item(), abs=1e-12)


def test_indices_tuple_goes_to_every_loss_without_miners() -> None:
    emb, labels = _batch(4)
    first, second = TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.5)
    triplets = TripletMarginMiner(margin=0.5)(emb, labels)
    expected = first(emb, labels, triplets) + second(emb, labels, triplets)
    assert MultipleLosses([first, second])(emb, labels, triplets).item() == pytest.approx(expected.item(), abs=1e-12)
    # miners that are all None are no miners
    value = MultipleLosses([first, second], miners=[None, None])(emb, labels, triplets)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)


def test_reference_set_reaches_losses_and_miners() -> None:
    emb, labels = _batch(5)
    ref_emb, ref_labels = _batch(6, n=7)
    first, second = TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.5)
    miner = TripletMarginMiner(margin=0.5)
    combined = MultipleLosses([first, second], miners=[miner, None], weights=[1.0, 0.25])
    mined = miner(emb, labels, ref_emb, ref_labels)
    expected = first(emb, labels, mined, ref_emb, ref_labels) + 0.25 * second(emb, labels, None, ref_emb, ref_labels)
    value = combined(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    # and the oracle of the second term, to be sure the reference set was used
    rows, ref_rows = emb.tolist(), ref_emb.tolist()
    triplets = tref.all_triplets(labels.tolist(), ref_labels.tolist())
    second_alone = MultipleLosses([second])(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    oracle = tref.avg_non_zero(tref.triplet_values(rows, triplets, 0.5, ref_emb=ref_rows))
    assert second_alone.item() == pytest.approx(oracle, abs=1e-10)


def test_gradient_is_the_weighted_sum_of_gradients() -> None:
    emb, labels = _batch(7)
    first, second = TripletMarginLoss(margin=0.5, smooth_loss=True), TripletMarginLoss(margin=0.8)
    x = emb.clone().requires_grad_()
    MultipleLosses([first, second], weights=[0.7, 3.0])(x, labels).backward()
    y = emb.clone().requires_grad_()
    (0.7 * first(y, labels) + 3.0 * second(y, labels)).backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-12, rtol=0)


def test_holds_a_cross_batch_memory() -> None:
    # the memory is called as loss(embeddings, labels, indices_tuple), like PML does
    combined = MultipleLosses([CrossBatchMemory(TripletMarginLoss(margin=0.3), 4, 12), TripletMarginLoss()])
    alone = CrossBatchMemory(TripletMarginLoss(margin=0.3), 4, 12)
    plain = TripletMarginLoss()
    for seed in range(3):
        emb, labels = _batch(seed, n=5)
        expected = alone(emb, labels) + plain(emb, labels)
        assert combined(emb, labels).item() == pytest.approx(expected.item(), abs=1e-12)
    assert "losses.0.embedding_memory" in combined.state_dict()


def test_submodules_are_registered() -> None:
    miner = TripletMarginMiner()
    combined = MultipleLosses({"a": TripletMarginLoss(), "b": TripletMarginLoss()}, miners={"b": miner})
    assert isinstance(combined.losses, torch.nn.ModuleDict) and isinstance(combined.miners, torch.nn.ModuleDict)
    assert any(m is miner for m in combined.modules())
    listed = MultipleLosses([TripletMarginLoss()], miners=[miner])
    assert isinstance(listed.losses, torch.nn.ModuleList) and listed.miners is not None
    assert MultipleLosses([TripletMarginLoss()]).miners is None


# --------------------------------------------------------------------------------------------- errors


def _msg(text: str) -> str:
    return re.escape(text)


def test_constructor_errors() -> None:
    loss = TripletMarginLoss()
    miner = TripletMarginMiner()
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (
            TypeError,
            "MultipleLosses: `losses` must be a list or dict of losses, got TripletMarginLoss.",
            {"losses": loss},
        ),
        (ValueError, "MultipleLosses: `losses` must be a non-empty list or dict of losses, got [].", {"losses": []}),
        (TypeError, "MultipleLosses: `losses[1]` must be a loss module, got str.", {"losses": [loss, "triplet"]}),
        (TypeError, "MultipleLosses: `losses` must be a dict with string keys, got key 3.", {"losses": {3: loss}}),
        (
            ValueError,
            "MultipleLosses: `miners` must be of length 2, one entry per loss (None for no miner), got length 1.",
            {"losses": [loss, loss], "miners": [miner]},
        ),
        (
            TypeError,
            "MultipleLosses: `miners` must be a list, like `losses`, got dict.",
            {"losses": [loss], "miners": {"a": miner}},
        ),
        (
            TypeError,
            "MultipleLosses: `miners` must be a dict, like `losses`, got list.",
            {"losses": {"a": loss}, "miners": [miner]},
        ),
        (
            ValueError,
            "MultipleLosses: `miners` must be keyed by the names of `losses` ['a', 'b'], got unknown keys ['c'].",
            {"losses": {"a": loss, "b": loss}, "miners": {"c": miner}},
        ),
        (
            TypeError,
            "MultipleLosses: `miners[0]` must be None or a miner module, got str.",
            {"losses": [loss], "miners": ["semihard"]},
        ),
        (
            ValueError,
            "MultipleLosses: `weights` must be keyed by exactly the names of `losses` ['a', 'b'], "
            "got missing keys ['b'].",
            {"losses": {"a": loss, "b": loss}, "weights": {"a": 1.0}},
        ),
        (
            ValueError,
            "MultipleLosses: `weights` must be keyed by exactly the names of `losses` ['a'], "
            "got unknown keys ['b'], missing keys ['a'].",
            {"losses": {"a": loss}, "weights": {"b": 1.0}},
        ),
        (
            ValueError,
            "MultipleLosses: `weights` must be of length 2, one entry per loss, got length 3.",
            {"losses": [loss, loss], "weights": [1, 2, 3]},
        ),
        (
            TypeError,
            "MultipleLosses: `weights[0]` must be a real number, got bool.",
            {"losses": [loss], "weights": [True]},
        ),
        (
            TypeError,
            "MultipleLosses: `weights['a']` must be a real number, got str.",
            {"losses": {"a": loss}, "weights": {"a": "1"}},
        ),
        (
            ValueError,
            "MultipleLosses: `weights[0]` must be finite, got nan.",
            {"losses": [loss], "weights": [float("nan")]},
        ),
    ]
    for error, text, kwargs in cases:
        with pytest.raises(error, match=_msg(text)):
            MultipleLosses(**kwargs)


def test_indices_tuple_with_miners_is_an_error() -> None:
    emb, labels = _batch(8)
    combined = MultipleLosses([TripletMarginLoss(), TripletMarginLoss()], miners=[None, TripletMarginMiner()])
    triplets = TripletMarginMiner()(emb, labels)
    with pytest.raises(
        ValueError,
        match=_msg(
            "MultipleLosses: `indices_tuple` must be None when `miners` are given (each loss with a miner takes the "
            "miner's output), got an indices tuple."
        ),
    ):
        combined(emb, labels, triplets)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_pml_parity(as_dict: bool) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    names = ["plain", "mined", "mean"]
    ours_losses = [
        TripletMarginLoss(margin=0.2),
        TripletMarginLoss(margin=0.3),
        TripletMarginLoss(margin=0.6, reducer=MeanReducer()),
    ]
    their_losses = [
        pml_losses.TripletMarginLoss(margin=0.2),
        pml_losses.TripletMarginLoss(margin=0.3),
        pml_losses.TripletMarginLoss(margin=0.6, reducer=pml_reducers.MeanReducer()),
    ]
    ours_miners = [None, TripletMarginMiner(margin=0.3, type_of_triplets="semihard"), None]
    their_miners = [None, pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard"), None]
    weights = [0.5, 2.0, 1.25]
    if as_dict:
        ours = MultipleLosses(
            dict(zip(names, ours_losses, strict=True)),
            miners={"mined": ours_miners[1]},
            weights=dict(zip(names, weights, strict=True)),
        )
        theirs = pml_losses.MultipleLosses(
            dict(zip(names, their_losses, strict=True)),
            miners={"mined": their_miners[1]},
            weights=dict(zip(names, weights, strict=True)),
        )
    else:
        ours = MultipleLosses(ours_losses, miners=ours_miners, weights=weights)
        theirs = pml_losses.MultipleLosses(their_losses, miners=their_miners, weights=weights)
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        x_ours, x_theirs = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        value_ours, value_theirs = ours(x_ours, labels), theirs(x_theirs, labels)
        assert value_ours.item() == pytest.approx(value_theirs.item(), abs=1e-6)
        value_ours.backward()
        value_theirs.backward()
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-6, rtol=0)


def test_pml_parity_with_indices_tuple() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(9, n=12)
    triplets = TripletMarginMiner(margin=0.4)(emb, labels)
    ours = MultipleLosses([TripletMarginLoss(margin=0.2), TripletMarginLoss(margin=0.4)], weights=[1.0, 0.5])
    theirs = pml_losses.MultipleLosses(
        [pml_losses.TripletMarginLoss(margin=0.2), pml_losses.TripletMarginLoss(margin=0.4)], weights=[1.0, 0.5]
    )
    value_theirs = theirs(emb, labels, tuple(triplets))
    assert ours(emb, labels, triplets).item() == pytest.approx(value_theirs.item(), abs=1e-6)
