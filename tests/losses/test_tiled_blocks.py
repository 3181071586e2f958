"""The tiled machinery of dmlkit.losses.tiled: pair lists and block masks against plain loops, the tiled row
aggregates and listed-pair distances against the dense matrix, gradients by gradcheck, and chunk_size rules."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance, SNRDistance
from dmlkit.indices import pair_counts, select_in_place
from dmlkit.losses import tiled
from dmlkit.losses.tiled import (
    AffineStat,
    Aggregate,
    Count,
    EveryPairBlocks,
    LabelBlocks,
    ListedBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    label_pair_counts,
    label_pairs,
    labels_have_negative,
    listed_in_both,
    listed_pair_counts,
    pair_distances,
    tile_size,
    tiled_rows,
)
from tests.reference.triplet import all_pairs as oracle_pairs

DISTANCES = {
    "cosine": CosineSimilarity,
    "dot_raw": lambda: DotProductSimilarity(normalize_embeddings=False),
    "lp": LpDistance,
    "lp_raw_squared": lambda: LpDistance(normalize_embeddings=False, power=2),
    "lp1": lambda: LpDistance(p=1),
    "snr": SNRDistance,
}


def _emb(seed: int, n: int, d: int = 4) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _labels(seed: int, n: int, classes: int = 3) -> Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed + 100))


# --------------------------------------------------------------------------------------------- pair lists


@pytest.mark.parametrize("n,classes", [(1, 1), (9, 3), (12, 1), (10, 10)])
def test_label_pairs_are_the_positive_pairs_in_row_major_order(n: int, classes: int) -> None:
    labels = _labels(n, n, classes)
    a, p = label_pairs(labels)
    a1, p1, _, _ = oracle_pairs(labels.tolist())
    assert (a.tolist(), p.tolist()) == (a1, p1)
    counts = [sum(1 for x in a1 if x == i) for i in range(n)]
    assert label_pair_counts(labels).tolist() == counts


def test_label_pairs_with_a_reference_set_keep_diagonal_pairs() -> None:
    labels, ref_labels = _labels(1, 7), _labels(2, 11)
    a, p = label_pairs(labels, ref_labels)
    a1, p1, _, _ = oracle_pairs(labels.tolist(), ref_labels.tolist())
    assert (a.tolist(), p.tolist()) == (a1, p1)
    assert label_pair_counts(labels, ref_labels).tolist() == [sum(1 for x in a1 if x == i) for i in range(7)]
    # the same tensor object as reference is the batch itself: self-pairs excluded
    assert label_pairs(labels, labels)[0].numel() == label_pairs(labels)[0].numel()
    assert label_pairs(labels, labels.clone())[0].numel() == label_pairs(labels)[0].numel() + 7


@pytest.mark.parametrize(
    "labels,ref_labels,expected",
    [([0], None, False), ([2, 2, 2], None, False), ([0, 1], None, True), ([1], [1, 1], False), ([1], [1, 0], True)],
)
def test_labels_have_negative(labels: list[int], ref_labels: list[int] | None, expected: bool) -> None:
    ref = None if ref_labels is None else torch.tensor(ref_labels)
    assert labels_have_negative(torch.tensor(labels), ref) is expected


def test_listed_pair_counts_and_overlap_count_distinct_pairs() -> None:
    rows, cols = torch.tensor([0, 0, 0, 2, 2]), torch.tensor([1, 1, 3, 0, 1])
    assert listed_pair_counts(rows, cols, 4, 5).tolist() == [2, 0, 2, 0]
    assert listed_in_both((rows, cols), (torch.tensor([0, 2, 2, 1]), torch.tensor([1, 1, 1, 1])), 5) == 2


# --------------------------------------------------------------------------------------------- block masks


def _dense(mask: object, shape: tuple[int, int]) -> list[list[float]]:
    if mask is None:
        return torch.ones(shape, dtype=torch.float64).tolist()
    if isinstance(mask, tiled.ExceptSelf):
        out = torch.ones(shape, dtype=torch.float64)
        out.diagonal(mask.offset).fill_(0)
        return out.tolist()
    assert isinstance(mask, Tensor)
    return mask.to(torch.float64).tolist()


def _assemble(blocks: tiled.PairBlocks, kind: PairSet, shape: tuple[int, int], block: int) -> list[list[float]]:
    out = [[0.0] * shape[1] for _ in range(shape[0])]
    for r0 in range(0, shape[0], block):
        for c0 in range(0, shape[1], block):
            rows, cols = (r0, min(r0 + block, shape[0])), (c0, min(c0 + block, shape[1]))
            masks = blocks.block(rows, cols, [kind])
            if masks is None:
                continue
            tile = _dense(masks[0], (rows[1] - rows[0], cols[1] - cols[0]))
            for i, row in enumerate(tile):
                out[r0 + i][c0 : c0 + len(row)] = row
    return out


@pytest.mark.parametrize("block", [1, 3, 4, 20])
@pytest.mark.parametrize("same_set", [True, False])
def test_label_blocks_tile_the_label_masks(block: int, same_set: bool) -> None:
    labels = _labels(3, 10)
    ref_labels = None if same_set else _labels(4, 9)
    shape = (10, 10 if same_set else 9)
    a1, p, a2, n = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())
    expected = {PairSet.POSITIVE: set(zip(a1, p, strict=True)), PairSet.NEGATIVE: set(zip(a2, n, strict=True))}
    expected[PairSet.CANDIDATE] = expected[PairSet.POSITIVE] | expected[PairSet.NEGATIVE]
    blocks = LabelBlocks(labels, ref_labels)
    for kind, pairs in expected.items():
        got = _assemble(blocks, kind, shape, block)
        assert {(i, j) for i in range(shape[0]) for j in range(shape[1]) if got[i][j]} == pairs, kind


@pytest.mark.parametrize("block", [1, 3, 5])
def test_listed_blocks_count_repeats_or_form_sets(block: int) -> None:
    pos = (torch.tensor([0, 0, 4, 6, 0]), torch.tensor([1, 1, 2, 6, 1]))
    neg = (torch.tensor([3, 6, 6, 0]), torch.tensor([5, 0, 0, 1]))
    shape = (7, 8)
    counted = ListedBlocks(shape, block, pos, neg, multiplicity=True, dtype=torch.float64)
    as_set = ListedBlocks(shape, block, pos, neg)
    for blocks, weight in ((counted, 3.0), (as_set, 1.0)):
        got = _assemble(blocks, PairSet.POSITIVE, shape, block)
        assert got[0][1] == weight and got[4][2] == 1 and got[6][6] == 1 and sum(map(sum, got)) == weight + 2
        got = _assemble(blocks, PairSet.NEGATIVE, shape, block)
        assert got[6][0] == weight - 1 if weight == 3 else got[6][0] == 1
    # candidates are a set whatever the multiplicity: (0, 1) is listed as both kinds
    got = _assemble(counted, PairSet.CANDIDATE, shape, block)
    assert {(i, j) for i in range(7) for j in range(8) if got[i][j]} == {(0, 1), (4, 2), (6, 6), (3, 5), (6, 0)}
    assert max(max(row) for row in got) == 1


def test_listed_blocks_skip_tiles_without_pairs() -> None:
    blocks = ListedBlocks((8, 8), 4, None, (torch.tensor([1]), torch.tensor([6])))
    assert blocks.block((0, 4), (0, 4), [PairSet.NEGATIVE]) is None
    assert blocks.block((4, 8), (4, 8), [PairSet.NEGATIVE, PairSet.POSITIVE]) is None
    masks = blocks.block((0, 4), (4, 8), [PairSet.NEGATIVE, PairSet.POSITIVE])
    assert masks is not None and int(masks[0].sum()) == 1 and int(masks[1].sum()) == 0  # type: ignore[union-attr]


def test_every_pair_blocks_refuse_labelled_sets() -> None:
    with pytest.raises(ValueError, match=re.escape("EveryPairBlocks: only candidate pairs exist without labels.")):
        EveryPairBlocks(True, torch.device("cpu")).block((0, 2), (0, 2), [PairSet.POSITIVE])


# --------------------------------------------------------------------------------------------- tiled aggregates


def _dense_stats(mat: Tensor, keep: Tensor, scale: float, shift: float) -> tuple[Tensor, Tensor, Tensor]:
    values = mat * scale + shift
    lse = torch.logsumexp(values.masked_fill(~keep, float("-inf")), dim=1)
    total = torch.where(keep, values, 0.0).sum(dim=1)
    positive = (torch.where(keep, values, 0.0) > 0).sum(dim=1).to(mat.dtype)
    return lse, total, positive


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("block", [2, 5, 13])
def test_row_aggregates_equal_the_dense_matrix(distance: str, block: int) -> None:
    dist = DISTANCES[distance]()
    emb, ref = _emb(0, 11), _emb(1, 9)
    labels, ref_labels = _labels(0, 11), _labels(1, 9)
    kernel = RowStatKernel(
        [
            AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, 2.0, 0.5),
            AffineStat(PairSet.POSITIVE, Aggregate.SUM, -1.5, 0.25, count=Count.POSITIVE),
            AffineStat(PairSet.CANDIDATE, Aggregate.SUM, 1.0, count=Count.CELLS),
        ]
    )

    def run(x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        q, rr = dist.maybe_normalize(x), dist.maybe_normalize(r)
        return tiled_rows(kernel, LabelBlocks(labels, ref_labels), dist, q, rr, block)

    out, counts = run(emb, ref)
    mat = dist(emb, ref)
    pos, neg = labels.unsqueeze(1) == ref_labels, labels.unsqueeze(1) != ref_labels
    lse = _dense_stats(mat, neg, 2.0, 0.5)[0]
    _, pos_sum, pos_count = _dense_stats(mat, pos, -1.5, 0.25)
    torch.testing.assert_close(out[:, 0], lse, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, 1], pos_sum, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, 2], mat.sum(dim=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(counts[:, 1], pos_count, rtol=0, atol=0)
    assert counts[:, 2].tolist() == [9.0] * 11 and not counts.requires_grad
    if distance != "snr" and block == 5:  # SNR's gradient is too steep for finite differences at this size
        assert torch.autograd.gradcheck(
            lambda x, r: run(x, r)[0], (emb.clone().requires_grad_(), ref.clone().requires_grad_())
        )


def test_rows_without_cells_give_minus_infinity_and_no_gradient() -> None:
    emb = _emb(2, 6).requires_grad_()
    mined = ListedBlocks((6, 6), 4, None, (torch.tensor([0, 0, 5]), torch.tensor([3, 4, 1])))
    kernel = RowStatKernel([AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, 3.0)])
    dist = CosineSimilarity()
    q = dist.maybe_normalize(emb)
    out = tiled_rows(kernel, mined, dist, q, q, 4)[0][:, 0]
    assert [math.isinf(v) for v in out.tolist()] == [False, True, True, True, True, False]
    finite = torch.where(torch.isfinite(out), out, 0.0)
    finite.sum().backward()
    assert bool(torch.isfinite(emb.grad).all()) and emb.grad[1:5].abs().sum() > 0  # rows 1-4 are pair partners
    mat = dist(emb.detach(), emb.detach()) * 3.0
    assert out[0].item() == pytest.approx(torch.logsumexp(mat[0, [3, 4]], 0).item(), rel=1e-12)


def test_every_pair_blocks_exclude_self_pairs_only_for_the_batch_itself() -> None:
    emb = _emb(3, 7)
    dist = LpDistance(power=2)
    q = dist.maybe_normalize(emb)
    kernel = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.SUM, 1.0, count=Count.CELLS)])
    same, counts = tiled_rows(kernel, EveryPairBlocks(True, q.device), dist, q, q, 3)
    other, _ = tiled_rows(kernel, EveryPairBlocks(False, q.device), dist, q, q, 3)
    torch.testing.assert_close(same[:, 0], dist(emb).sum(dim=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(other[:, 0], dist(emb).sum(dim=1), rtol=0, atol=1e-12)
    assert counts[:, 0].tolist() == [6.0] * 7
    weighted = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, 1.0)])
    with_self = tiled_rows(weighted, EveryPairBlocks(False, q.device), dist, q, q, 3)[0][:, 0]
    without = tiled_rows(weighted, EveryPairBlocks(True, q.device), dist, q, q, 3)[0][:, 0]
    # the self-pair has distance 0: it adds exp(0) = 1 inside the log
    torch.testing.assert_close(with_self.exp() - without.exp(), torch.ones(7, dtype=torch.float64))


# --------------------------------------------------------------------------------------------- listed pairs


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_pair_distances_equal_matrix_entries(distance: str) -> None:
    dist = DISTANCES[distance]()
    emb, ref = _emb(5, 6), _emb(6, 8)
    rows, cols = torch.tensor([0, 0, 5, 3, 3, 2]), torch.tensor([7, 7, 0, 1, 6, 2])

    def run(x: Tensor, r: Tensor) -> Tensor:
        return pair_distances(dist, dist.maybe_normalize(x), dist.maybe_normalize(r), rows, cols, chunk=4)

    torch.testing.assert_close(run(emb, ref), dist(emb, ref)[rows, cols], rtol=0, atol=1e-12)
    if distance != "snr":
        assert torch.autograd.gradcheck(run, (emb.clone().requires_grad_(), ref.clone().requires_grad_()))


def test_pair_distances_of_a_batch_with_itself_accumulate_both_ends() -> None:
    emb = _emb(7, 5).requires_grad_()
    dist = CosineSimilarity()
    rows, cols = torch.tensor([0, 1, 4]), torch.tensor([1, 1, 2])
    q = dist.maybe_normalize(emb)
    pair_distances(dist, q, q, rows, cols, chunk=2).sum().backward()
    check = emb.detach().clone().requires_grad_()
    dist(check)[rows, cols].sum().backward()
    torch.testing.assert_close(emb.grad, check.grad, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- chunk_size


def test_tile_size_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tile_size(None, 3072, 3072) is None
    assert tile_size(None, 3073, 3072) == tiled.DEFAULT_BLOCK
    assert tile_size(None, 4096, 4096) == tiled.DEFAULT_BLOCK
    assert tile_size(0, 10**6, 10**6) is None
    assert tile_size(7, 3, 3) == 7
    monkeypatch.setattr(tiled, "AUTO_TILE_BATCH", 2)
    assert tile_size(None, 3, 2) == tiled.DEFAULT_BLOCK and tile_size(None, 2, 2) is None


def test_check_chunk_size_messages() -> None:
    check_chunk_size("NTXentLoss", None)
    check_chunk_size("NTXentLoss", 0)
    with pytest.raises(ValueError, match=re.escape("NTXentLoss: `chunk_size` must be an integer >= 0, got -1.")):
        check_chunk_size("NTXentLoss", -1)
    with pytest.raises(TypeError, match=re.escape("NTXentLoss: `chunk_size` must be an integer, got 2.5.")):
        check_chunk_size("NTXentLoss", 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fill", [0.0, -0.0, float("-inf"), 3.5])
def test_select_in_place_is_bit_exact_torch_where(dtype: torch.dtype, fill: float) -> None:
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    g = torch.Generator().manual_seed(0)
    values = torch.randn(37, 41, generator=g).to(dtype)
    values[0, 0], values[1, 1], values[2, 2], values[3, 3] = float("nan"), float("inf"), -0.0, float("-inf")
    mask = torch.rand(37, 41, generator=g) > 0.4
    for v, m in ((values, mask), (values.t(), mask.t())):  # contiguous and transposed views
        expected = torch.where(m, v, fill)
        got = select_in_place(m, v.clone(), fill)
        assert torch.equal(got.view(bits), expected.view(bits))


def test_select_in_place_in_slices_equals_where(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmlkit import indices

    monkeypatch.setattr(indices, "_SELECT_CELLS", 7)  # slices of one row of 5 cells
    g = torch.Generator().manual_seed(1)
    values, mask = torch.randn(9, 5, generator=g), torch.rand(9, 5, generator=g) > 0.5
    assert torch.equal(select_in_place(mask, values.clone(), float("-inf")), torch.where(mask, values, float("-inf")))


def test_select_in_place_falls_back_to_where_for_a_broadcast_mask() -> None:
    values, mask = torch.arange(6.0).view(2, 3), torch.tensor([True, False, True])
    assert torch.equal(select_in_place(mask, values, -1.0), torch.tensor([[0.0, -1.0, 2.0], [3.0, -1.0, 5.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
@pytest.mark.parametrize("repeated", [False, True])
def test_pair_counts_counts_every_listed_cell(dtype: torch.dtype, repeated: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    cells = torch.randperm(7 * 9, generator=generator)[:30]
    if repeated:
        cells = torch.cat([cells, cells[:5], cells[:2]])
    rows, cols = cells // 9, cells % 9
    expected = torch.zeros(7, 9, dtype=torch.float64)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        expected[r, c] += 1
    counts = pair_counts((7, 9), rows, cols, dtype)
    assert counts.dtype == dtype
    assert torch.equal(counts.double(), expected)
    assert int(counts.max()) == (3 if repeated else 1)


def test_pair_counts_of_no_pair_is_zero() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(pair_counts((3, 4), empty, empty), torch.zeros(3, 4))
