"""Contracts shared by every regularizer, and their use as a loss's ``embedding_regularizer``."""

from __future__ import annotations

import pytest
import torch

import dmlkit.regularizers as regularizers
from dmlkit.losses import TripletMarginLoss
from dmlkit.regularizers import (
    REGULARIZERS,
    BaseRegularizer,
    CenterInvariantRegularizer,
    LpRegularizer,
    RegularFaceRegularizer,
    SparseCentersRegularizer,
    ZeroMeanRegularizer,
)

NUM_CLASSES, CENTERS_PER_CLASS = 4, 2


def _make(name: str) -> BaseRegularizer:
    cls = REGULARIZERS[name]
    if cls is SparseCentersRegularizer:
        return cls(NUM_CLASSES, CENTERS_PER_CLASS)  # type: ignore[call-arg]
    return cls()


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(NUM_CLASSES * CENTERS_PER_CLASS, 6, generator=g, dtype=torch.float64)
    return emb, torch.arange(NUM_CLASSES).repeat_interleave(CENTERS_PER_CLASS)


def test_registry_holds_every_regularizer() -> None:
    assert dict(REGULARIZERS) == {
        "center_invariant": CenterInvariantRegularizer,
        "lp": LpRegularizer,
        "regular_face": RegularFaceRegularizer,
        "sparse_centers": SparseCentersRegularizer,
        "zero_mean": ZeroMeanRegularizer,
    }
    for name, cls in REGULARIZERS.items():
        assert REGULARIZERS.name_of(cls) == name
        assert cls.__name__ in regularizers.__all__


def test_registry_rejects_typos() -> None:
    with pytest.raises(KeyError, match="Did you mean 'zero_mean'"):
        REGULARIZERS["zero_man"]


def test_pml_has_the_same_regularizers() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.regularizers", reason="needs PML")
    theirs = {name for name in dir(pml) if name.endswith("Regularizer") and name != "BaseRegularizer"}
    assert theirs == {cls.__name__ for cls in REGULARIZERS.values()}


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_scalar_output_and_gradient(name: str) -> None:
    emb, _ = _batch(1)
    emb.requires_grad_()
    out = _make(name)(emb)
    assert out.ndim == 0 and out.dtype == torch.float64
    out.backward()
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all()) and bool((emb.grad != 0).any())


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_float32_input_stays_float32(name: str) -> None:
    emb, _ = _batch(2)
    assert _make(name)(emb.float()).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_docstring_has_a_runnable_example(name: str) -> None:
    doc = REGULARIZERS[name].__doc__ or ""
    assert "Example:" in doc and ">>>" in doc


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_embedding_regularizer_is_added_with_its_weight(name: str) -> None:
    emb, labels = _batch(3)
    plain = TripletMarginLoss(margin=0.5)(emb, labels)
    penalty = _make(name)(emb)
    assert penalty.item() > 0
    with_reg = TripletMarginLoss(margin=0.5, embedding_regularizer=_make(name), embedding_reg_weight=0.5)(emb, labels)
    assert with_reg.item() == pytest.approx(plain.item() + 0.5 * penalty.item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_zero_weight_contributes_nothing(name: str) -> None:
    emb, labels = _batch(4)
    plain_emb = emb.clone().requires_grad_()
    reg_emb = emb.clone().requires_grad_()
    plain = TripletMarginLoss(margin=0.5)(plain_emb, labels)
    with_reg = TripletMarginLoss(margin=0.5, embedding_regularizer=_make(name), embedding_reg_weight=0)(reg_emb, labels)
    plain.backward()
    with_reg.backward()
    assert plain.item() > 0
    assert with_reg.item() == plain.item()
    torch.testing.assert_close(reg_emb.grad, plain_emb.grad, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_loss_with_embedding_regularizer_matches_pml(name: str) -> None:
    pytest.importorskip("pytorch_metric_learning", reason="PML parity needs PML")
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import regularizers as pml_regularizers

    pml_cls = getattr(pml_regularizers, REGULARIZERS[name].__name__)
    pml_reg = pml_cls(NUM_CLASSES, CENTERS_PER_CLASS) if name == "sparse_centers" else pml_cls()
    emb, labels = _batch(5)
    ours = emb.clone().requires_grad_()
    theirs = emb.clone().requires_grad_()
    a = TripletMarginLoss(embedding_regularizer=_make(name), embedding_reg_weight=0.5)(ours, labels)
    b = pml_losses.TripletMarginLoss(embedding_regularizer=pml_reg, embedding_reg_weight=0.5)(theirs, labels)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=0)


def test_lp_embedding_regularizer_in_triplet_loss_matches_pml() -> None:
    pytest.importorskip("pytorch_metric_learning", reason="PML parity needs PML")
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import regularizers as pml_regularizers

    g = torch.Generator().manual_seed(6)
    emb = torch.randn(16, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (16,), generator=g)
    a = TripletMarginLoss(embedding_regularizer=LpRegularizer(), embedding_reg_weight=0.5)(emb, labels)
    b = pml_losses.TripletMarginLoss(embedding_regularizer=pml_regularizers.LpRegularizer(), embedding_reg_weight=0.5)(
        emb, labels
    )
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert a.item() > TripletMarginLoss()(emb, labels).item()
