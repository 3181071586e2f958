"""Every loss with a tiled path gives the dense path's value and gradients (float64, within 1e-6): batch sizes that
are and are not multiples of the block, reference sets, miners' pairs and triplets, repeated pairs, all-unique and
single-class labels, distances and reducers; gradcheck of the tiled path; the automatic choice; the documented
fallbacks to the dense path; pytorch-metric-learning parity of the tiled path."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.losses import (
    BaseMetricLossFunction,
    CircleLoss,
    ContrastiveLoss,
    GeneralizedLiftedStructureLoss,
    MultiSimilarityLoss,
    NCALoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
    tiled,
)
from dmlkit.losses.alignment import AlignmentLoss
from dmlkit.losses.sigmoid import SigmoidLoss
from dmlkit.losses.uniformity import UniformityLoss
from dmlkit.miners import MultiSimilarityMiner, PairMarginMiner, TripletMarginMiner
from dmlkit.reducers import MeanReducer, PerAnchorReducer, SumReducer, ThresholdReducer

pytestmark = pytest.mark.filterwarnings("ignore:.*every label in the batch is")

Factory = Callable[..., BaseMetricLossFunction]

#: name -> factory(chunk_size, **kwargs)
LOSSES: dict[str, Factory] = {
    "ntxent": lambda cs, **kw: NTXentLoss(temperature=0.2, chunk_size=cs, **kw),
    "supcon": lambda cs, **kw: SupConLoss(temperature=0.3, chunk_size=cs, **kw),
    "multi_similarity": lambda cs, **kw: MultiSimilarityLoss(alpha=2, beta=10, base=0.3, chunk_size=cs, **kw),
    "circle": lambda cs, **kw: CircleLoss(m=0.3, gamma=16, chunk_size=cs, **kw),
    "contrastive": lambda cs, **kw: ContrastiveLoss(pos_margin=0.3, neg_margin=1.1, chunk_size=cs, **kw),
    "triplet": lambda cs, **kw: TripletMarginLoss(margin=0.3, chunk_size=cs, **kw),
    "sigmoid": lambda cs, **kw: SigmoidLoss(temperature=5.0, bias=-2.0, chunk_size=cs, **kw),
    "alignment": lambda cs, **kw: AlignmentLoss(chunk_size=cs, **kw),
    "uniformity": lambda cs, **kw: UniformityLoss(chunk_size=cs, **kw),
    "nca": lambda cs, **kw: NCALoss(softmax_scale=2.0, chunk_size=cs, **kw),
    "generalized_lifted": lambda cs, **kw: GeneralizedLiftedStructureLoss(
        neg_margin=1.2, pos_margin=0.1, chunk_size=cs, **kw
    ),
}
TAKES_INDICES = [name for name in LOSSES if name != "uniformity"]
#: losses that accept any distance (a similarity or a distance), and the distances they are checked under
ANY_DISTANCE = ["ntxent", "supcon", "multi_similarity", "contrastive", "triplet", "nca", "generalized_lifted"]
DISTANCES: dict[str, Callable[[], Any]] = {
    "lp": LpDistance,
    "lp_raw_squared": lambda: LpDistance(normalize_embeddings=False, power=2),
    "dot_raw": lambda: DotProductSimilarity(normalize_embeddings=False),
}

BLOCK = 8


def _batch(seed: int, n: int, classes: int = 4, d: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _run(
    loss_fn: BaseMetricLossFunction,
    emb: Tensor,
    labels: Tensor | None,
    indices: tuple[Tensor, ...] | None = None,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> tuple[float, list[Tensor]]:
    inputs = [emb.detach().clone().requires_grad_()]
    if ref is not None:
        inputs.append(ref.detach().clone().requires_grad_())
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    value = loss_fn(inputs[0], labels, indices, inputs[1] if ref is not None else None, ref_labels)
    grads = torch.autograd.grad(value, inputs + params, allow_unused=True)
    together = zip(grads, inputs + params, strict=True)
    return value.item(), [g if g is not None else torch.zeros_like(x) for g, x in together]


def assert_tiled_equals_dense(
    make: Factory,
    emb: Tensor,
    labels: Tensor | None,
    indices: tuple[Tensor, ...] | None = None,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    block: int = BLOCK,
    **kwargs: Any,
) -> float:
    dense_value, dense_grads = _run(make(0, **kwargs), emb, labels, indices, ref, ref_labels)
    tiled_value, tiled_grads = _run(make(block, **kwargs), emb, labels, indices, ref, ref_labels)
    assert tiled_value == pytest.approx(dense_value, rel=0, abs=1e-6)
    for dense, tiled_grad in zip(dense_grads, tiled_grads, strict=True):
        torch.testing.assert_close(tiled_grad, dense, rtol=0, atol=1e-6)
    return dense_value


class _Spy:
    """Counts tiled passes, to tell which path a loss took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = tiled._TiledRows.apply

        def counting(*args: Any) -> Any:
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(tiled._TiledRows, "apply", counting)


# --------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("n", [16, 21, 5])
def test_labels(name: str, n: int) -> None:
    emb, labels = _batch(n, n)
    value = assert_tiled_equals_dense(LOSSES[name], emb, labels)
    assert value != 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_reference_set(name: str) -> None:
    emb, labels = _batch(1, 13)
    ref, ref_labels = _batch(2, 18)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, ref=ref, ref_labels=ref_labels)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("kind", ["unique", "single"])
def test_all_unique_and_single_class_labels(name: str, kind: str) -> None:
    emb, _ = _batch(3, 19)
    labels = torch.arange(19) if kind == "unique" else torch.full((19,), 3)
    assert_tiled_equals_dense(LOSSES[name], emb, labels)


@pytest.mark.parametrize("name", ["supcon", "multi_similarity", "circle", "sigmoid"])
@pytest.mark.parametrize("per_element", [-1, 10**6])
def test_positives_from_the_tiles_or_from_their_list(
    name: str, per_element: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # few positive pairs are listed, many are masked on every tile: both give the dense path's value
    monkeypatch.setattr(tiled, "LISTED_PER_ELEMENT", per_element)
    emb, labels = _batch(22, 17)
    ref, ref_labels = _batch(23, 9)
    assert_tiled_equals_dense(LOSSES[name], emb, labels)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, None, ref, ref_labels)
    assert_tiled_equals_dense(LOSSES[name], emb, torch.zeros(17, dtype=torch.long))
    assert_tiled_equals_dense(LOSSES[name], emb, torch.arange(17))


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_sample_and_tiny_blocks(name: str) -> None:
    emb, labels = _batch(4, 7)
    assert_tiled_equals_dense(LOSSES[name], emb[:1], labels[:1])
    assert_tiled_equals_dense(LOSSES[name], emb, labels, block=1)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, block=3)


# --------------------------------------------------------------------------------------------- miners


def _mined(kind: str, emb: Tensor, labels: Tensor, ref: Tensor | None, ref_labels: Tensor | None) -> tuple:
    if kind == "triplets":
        out = TripletMarginMiner(margin=0.6, type_of_triplets="all")(emb, labels, ref, ref_labels)
    elif kind == "pairs":
        out = PairMarginMiner(pos_margin=0.5, neg_margin=1.0)(emb, labels, ref, ref_labels)
    elif kind == "ms_pairs":
        out = MultiSimilarityMiner(epsilon=0.1)(emb, labels, ref, ref_labels)
    else:  # hand-made pairs with repeats and an anchor without negatives
        a1, p, a2, n = PairMarginMiner(pos_margin=0.0, neg_margin=4.0)(emb, labels, ref, ref_labels)
        keep = a2 != a1[0]  # the first anchor has no negative
        a2, n = a2[keep], n[keep]
        out = (torch.cat([a1, a1[:3]]), torch.cat([p, p[:3]]), torch.cat([a2, a2[::2]]), torch.cat([n, n[::2]]))
    assert all(t.numel() > 0 for t in out), kind
    return tuple(out)


@pytest.mark.parametrize("name", TAKES_INDICES)
@pytest.mark.parametrize("kind", ["triplets", "pairs", "ms_pairs", "repeated"])
@pytest.mark.parametrize("with_ref", [False, True])
def test_miners(name: str, kind: str, with_ref: bool) -> None:
    emb, labels = _batch(5, 17)
    ref, ref_labels = _batch(6, 12) if with_ref else (None, None)
    indices = _mined(kind, emb, labels, ref, ref_labels)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, indices, ref, ref_labels)
    if name not in ("triplet", "nca"):  # the indices alone define the pairs (NCA's only weigh the rows)
        assert_tiled_equals_dense(LOSSES[name], emb, None, indices, ref, ref_labels)


@pytest.mark.parametrize("name", TAKES_INDICES)
@pytest.mark.parametrize("kind", ["triplets", "pairs", "ms_pairs", "repeated"])
def test_miners_pairs_as_whole_matrix_masks(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # every listing counts as dense: whole-matrix masks (bool for sets, counts where a repeated pair weighs k)
    monkeypatch.setattr(tiled, "DENSE_LISTED_CELLS", 10**9)
    emb, labels = _batch(15, 17)
    indices = _mined(kind, emb, labels, None, None)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, indices)
    ref, ref_labels = _batch(16, 12)
    indices = _mined(kind, emb, labels, ref, ref_labels)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, indices, ref, ref_labels)


def test_listed_blocks_choice() -> None:
    pairs = (torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 2, 0]))
    assert isinstance(tiled.listed_blocks((4, 4), 2, None, pairs), tiled.MaskBlocks)
    assert isinstance(tiled.listed_blocks((64, 64), 2, None, pairs), tiled.ListedBlocks)
    repeated = (torch.tensor([0, 0]), torch.tensor([1, 1]))
    counted = tiled.listed_blocks((2, 2), 2, repeated, repeated, multiplicity=True, dtype=torch.float64)
    assert isinstance(counted, tiled.MaskBlocks)
    sets = [tiled.PairSet.NEGATIVE, tiled.PairSet.CANDIDATE, tiled.PairSet.POSITIVE]
    negative, candidate, positive = counted.block((0, 2), (0, 2), sets)
    assert negative.tolist() == positive.tolist() == [[0.0, 2.0], [0.0, 0.0]]
    assert candidate.tolist() == [[False, True], [False, False]]
    assert counted.block((1, 2), (0, 2), sets) is None


def test_supcon_anchor_whose_only_candidate_is_its_positive_is_left_out() -> None:
    # its value is exactly 0 (the log-softmax of one logit), so the default non-zero mean skips it on both paths
    emb, labels = _batch(24, 10)
    a1, p, a2, n = PairMarginMiner(pos_margin=0.0, neg_margin=4.0)(emb, labels)
    first = int(a1[0])
    one_pos = (a1 != first) | (torch.arange(a1.numel()) == 0)
    pairs = (a1[one_pos], p[one_pos], a2[a2 != first], n[a2 != first])
    terms = SupConLoss(chunk_size=4).compute_terms(emb, labels, pairs, emb, labels)["loss"]
    assert terms.values[first].item() == 0.0
    assert_tiled_equals_dense(LOSSES["supcon"], emb, labels, pairs, block=4)


def test_uniformity_refuses_mined_pairs_on_both_paths() -> None:
    emb, labels = _batch(7, 9)
    indices = _mined("pairs", emb, labels, None, None)
    expected = (
        "UniformityLoss: `indices_tuple` must be None: the uniformity loss runs over every pair of the batch, "
        "not over mined pairs, got a tuple."
    )
    for chunk in (0, 4):
        with pytest.raises(ValueError, match=re.escape(expected)):
            UniformityLoss(chunk_size=chunk)(emb, labels, indices)


@pytest.mark.parametrize("loss_cls", [CircleLoss, GeneralizedLiftedStructureLoss])
def test_refuses_pairs_listed_as_both_on_both_paths(loss_cls: type) -> None:
    emb, labels = _batch(8, 9)
    indices = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([0, 1]), torch.tensor([2, 4]))
    expected = (
        f"{loss_cls.__name__}: `indices_tuple` must be pairs that are either positive or negative, not both, "
        "got 1 pair(s) listed as both."
    )
    for chunk in (0, 4):
        with pytest.raises(ValueError, match=re.escape(expected)):
            loss_cls(chunk_size=chunk)(emb, labels, indices)


# --------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("name", ANY_DISTANCE)
@pytest.mark.parametrize("distance", list(DISTANCES))
def test_distances(name: str, distance: str) -> None:
    emb, labels = _batch(9, 14, classes=3)
    ref, ref_labels = _batch(10, 11, classes=3)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, distance=DISTANCES[distance]())
    assert_tiled_equals_dense(LOSSES[name], emb, labels, None, ref, ref_labels, distance=DISTANCES[distance]())


@pytest.mark.parametrize("name", ["alignment", "uniformity"])
def test_alignment_and_uniformity_distances(name: str) -> None:
    emb, labels = _batch(11, 14, classes=3)
    for distance in (LpDistance(), LpDistance(normalize_embeddings=False, power=2), LpDistance(p=1)):
        assert_tiled_equals_dense(LOSSES[name], emb, labels, distance=distance)


@pytest.mark.parametrize("name", ["ntxent", "supcon", "multi_similarity", "circle", "sigmoid", "alignment"])
@pytest.mark.parametrize("reducer", [MeanReducer, SumReducer, lambda: ThresholdReducer(low=0.05), PerAnchorReducer])
def test_any_reducer_on_per_pair_or_per_anchor_terms(name: str, reducer: Callable[[], Any]) -> None:
    emb, labels = _batch(12, 15)
    indices = _mined("pairs", emb, labels, None, None)
    assert_tiled_equals_dense(LOSSES[name], emb, labels, reducer=reducer())
    assert_tiled_equals_dense(LOSSES[name], emb, labels, indices, reducer=reducer())


@pytest.mark.parametrize("reducer", [MeanReducer, SumReducer])
@pytest.mark.parametrize("name", ["contrastive", "triplet"])
def test_fused_reducers(name: str, reducer: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    emb, labels = _batch(13, 15)
    for indices in (None, _mined("pairs", emb, labels, None, None), _mined("repeated", emb, labels, None, None)):
        assert_tiled_equals_dense(LOSSES[name], emb, labels, indices, reducer=reducer())
    assert spy.calls == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"smooth_loss": True},
        {"smooth_loss": True, "margin": 0.0},
        {"swap": True},
        {"swap": True, "smooth_loss": True, "distance": CosineSimilarity()},
        {"triplets_per_anchor": 3},
    ],
)
def test_triplet_options(kwargs: dict[str, Any]) -> None:
    emb, labels = _batch(14, 15)
    ref, ref_labels = _batch(15, 10)
    kwargs = dict(kwargs)
    margin = kwargs.pop("margin", 0.3)

    def make(cs: int, **kw: Any) -> BaseMetricLossFunction:
        generator = torch.Generator().manual_seed(0)  # the same random triplets on both paths
        return TripletMarginLoss(margin=margin, chunk_size=cs, generator=generator, **kwargs, **kw)

    assert_tiled_equals_dense(make, emb, labels)
    assert_tiled_equals_dense(make, emb, labels, None, ref, ref_labels)
    for kind in ("triplets", "pairs", "repeated"):
        assert_tiled_equals_dense(make, emb, labels, _mined(kind, emb, labels, ref, ref_labels), ref, ref_labels)


def test_fallbacks_to_the_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    emb, labels = _batch(16, 12)
    # every triplet with swap, or with a reducer that needs every triplet; every negative pair with such a reducer
    assert_tiled_equals_dense(LOSSES["triplet"], emb, labels, swap=True)
    assert_tiled_equals_dense(LOSSES["triplet"], emb, labels, reducer=ThresholdReducer(low=0.1))
    assert_tiled_equals_dense(LOSSES["contrastive"], emb, labels, reducer=PerAnchorReducer())
    assert spy.calls == 0
    # mined triplets need no matrix: listed, whatever the reducer
    assert_tiled_equals_dense(
        LOSSES["triplet"], emb, labels, _mined("triplets", emb, labels, None, None), reducer=ThresholdReducer(low=0.1)
    )


def test_chunk_size_none_tiles_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(tiled, "AUTO_TILE_BATCH", 6)
    monkeypatch.setattr(tiled, "DEFAULT_BLOCK", 4)
    emb, labels = _batch(17, 10)
    dense = NTXentLoss(chunk_size=0)(emb, labels)
    assert spy.calls == 0
    automatic = NTXentLoss()(emb, labels)
    assert spy.calls == 1 and automatic.item() == pytest.approx(dense.item(), abs=1e-12)
    NTXentLoss()(emb[:6], labels[:6])  # 36 cells: not above 6 x 6
    assert spy.calls == 1


@pytest.mark.parametrize("name", list(LOSSES))
def test_chunk_size_is_validated(name: str) -> None:
    cls = type(LOSSES[name](0))
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}: `chunk_size` must be an integer >= 0, got -2.")):
        LOSSES[name](-2)
    with pytest.raises(TypeError, match=re.escape(f"{cls.__name__}: `chunk_size` must be an integer, got 'auto'.")):
        LOSSES[name]("auto")


# --------------------------------------------------------------------------------------------- gradcheck


# The circle loss holds its weights constant in the gradient (the paper's choice): its gradient is not the
# finite-difference derivative, and its tiled gradient is checked against the dense one above.
@pytest.mark.parametrize("name", [name for name in LOSSES if name != "circle"])
def test_gradcheck_of_the_tiled_path(name: str) -> None:
    emb, labels = _batch(18, 6, classes=2, d=3)
    ref, ref_labels = _batch(19, 5, classes=2, d=3)
    kwargs: dict[str, Any] = {}
    if name == "triplet":
        kwargs = {"smooth_loss": True}
    loss_fn = LOSSES[name](2, **kwargs)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- float32 and PML


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_is_finite_and_close(name: str) -> None:
    emb, labels = _batch(20, 40, classes=8, d=16)
    dense = LOSSES[name](0)(emb.float(), labels)
    tiled_value = LOSSES[name](16)(emb.float(), labels)
    assert bool(torch.isfinite(tiled_value)) and tiled_value.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "name,pml_name,pml_kwargs",
    [
        ("ntxent", "NTXentLoss", {"temperature": 0.2}),
        ("supcon", "SupConLoss", {"temperature": 0.3}),
        ("multi_similarity", "MultiSimilarityLoss", {"alpha": 2, "beta": 10, "base": 0.3}),
        ("circle", "CircleLoss", {"m": 0.3, "gamma": 16}),
        ("contrastive", "ContrastiveLoss", {"pos_margin": 0.3, "neg_margin": 1.1}),
        ("triplet", "TripletMarginLoss", {"margin": 0.3}),
    ],
)
def test_tiled_path_matches_pml(name: str, pml_name: str, pml_kwargs: dict[str, Any]) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(21, 23)
    ours = LOSSES[name](5)(emb, labels).item()
    theirs = getattr(pml_losses, pml_name)(**pml_kwargs)(emb, labels).item()
    assert ours == pytest.approx(theirs, rel=0, abs=1e-6)
