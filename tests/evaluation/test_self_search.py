"""The CPU search of a set against itself with each pair's key computed once (dmlkit.evaluation.self_search),
against brute force (ties by index), the row-by-row search, and through its fallbacks."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import pytest
import torch

from dmlkit.evaluation import AccuracyCalculator, ExactKNN, KnnDistance, knn
from dmlkit.evaluation import self_search as ss
from tests.evaluation.test_knn import brute_force, integer_points

knn_module = importlib.import_module("dmlkit.evaluation.knn")
pytestmark = pytest.mark.skipif(ss.compiled_filter() is None, reason="the symmetric search needs numba")


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The search's size floor lowered so that a few hundred rows take it; returns a log of its calls."""
    monkeypatch.setattr(ss, "_MIN_SIZE", 64)
    calls: list[int] = []
    original = ss.iter_self_search

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ss, "iter_self_search", spy)
    return calls


def _row_by_row(x: torch.Tensor, k: int, distance: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = list(knn_module._iter_checked(x, k, x, True, KnnDistance(distance), block_size, symmetric=False))
    return torch.cat([b.distances for _, b in blocks]), torch.cat([b.indices for _, b in blocks])


@pytest.mark.parametrize("n", [2100, 2500])  # three bands, the last one short; 2500 is not a multiple of 256
def test_matches_brute_force_with_ties(n: int, small_bands: list[int]) -> None:
    # integer points: float32 keys are exact, most are tied, many rows are duplicates (distance 0)
    x = integer_points(n, 3, seed=n)
    got = knn(x, 12, block_size=64)
    assert small_bands, "the symmetric search was not taken"
    want_dist, want_idx = brute_force(x, 12, x, ref_includes_query=True)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
def test_matches_the_row_by_row_search_on_continuous_data(distance: str, small_bands: list[int]) -> None:
    x = torch.randn(2300, 16, generator=torch.Generator().manual_seed(3)) + 5.0
    got = knn(x, 25, distance=distance, block_size=128)
    assert small_bands
    want_dist, want_idx = _row_by_row(x, 25, distance, 128)
    # the same neighbours up to the order of near-ties, whose keys round differently in the two searches
    torch.testing.assert_close(got.distances, want_dist, rtol=1e-5, atol=1e-5)
    assert (got.indices == want_idx).float().mean() > 0.999


def test_buffers_grow_when_a_tile_has_more_hits(monkeypatch: pytest.MonkeyPatch, small_bands: list[int]) -> None:
    monkeypatch.setattr(ss, "_ROOM_PER_NEIGHBOUR", 0)  # room for 64 hits per row at first: too few
    x = integer_points(2100, 3, seed=9)
    got = knn(x, 90, block_size=64)
    want_dist, want_idx = brute_force(x, 90, x, ref_includes_query=True)
    assert small_bands and torch.equal(got.indices, want_idx)


def test_rows_short_of_k_hits_are_redone(monkeypatch: pytest.MonkeyPatch, small_bands: list[int]) -> None:
    original = knn_module._sample_threshold

    def tight(*args: object) -> torch.Tensor:
        bound = original(*args)  # type: ignore[arg-type]
        first_row = args[3]  # every 7th row of the whole set gets a bound below all of its keys
        return torch.where((torch.arange(bound.shape[0]) + first_row) % 7 == 0, bound.new_tensor(-1e30), bound)

    monkeypatch.setattr(knn_module, "_sample_threshold", tight)
    redone = []
    search_block = knn_module._search_block
    monkeypatch.setattr(knn_module, "_search_block", lambda *a, **kw: redone.append(1) or search_block(*a, **kw))
    x = integer_points(2100, 3, seed=10)
    got = knn(x, 12, block_size=64)
    want_dist, want_idx = brute_force(x, 12, x, ref_includes_query=True)
    assert small_bands and len(redone) == len(range(0, 2100, 7))
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


def test_keys_beyond_float32_fall_back_to_the_row_by_row_search(small_bands: list[int]) -> None:
    x = integer_points(2100, 3, seed=11) * 1e19
    got = knn(x, 5, block_size=64)
    want_dist, _ = brute_force(x, 5, x, ref_includes_query=True)
    # At this scale even float64 keys round (products need more than 53 bits), and how depends on the matrix
    # product's kernel, so duplicate rows may come back in another order than by index. The neighbours must
    # still be true nearest neighbours: their exact distances are the k smallest.
    exact = (x.double()[:, None, :] - x.double()[got.indices]).norm(dim=2)
    assert not bool((got.indices == torch.arange(len(x))[:, None]).any())
    torch.testing.assert_close(exact, want_dist, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("case", "taken"),
    [("self", True), ("float64", False), ("separate reference", False), ("reference extends query", False)],
)
def test_taken_only_for_a_float32_set_against_itself(case: str, taken: bool, small_bands: list[int]) -> None:
    x = integer_points(2100, 3, seed=12)
    if case == "self":
        knn(x, 8, block_size=64)
    elif case == "float64":
        knn(x.double(), 8, block_size=64)
    elif case == "separate reference":
        knn(x[:1000], 8, x[1000:], block_size=64)
    else:
        knn(x[:1000], 8, x, ref_includes_query=True, block_size=64)
    assert bool(small_bands) == taken


def test_without_numba_the_row_by_row_search_answers(monkeypatch: pytest.MonkeyPatch, small_bands: list[int]) -> None:
    monkeypatch.setattr(ss, "compiled_filter", lambda: None)
    x = integer_points(2100, 3, seed=13)
    got = knn(x, 8, block_size=64)
    assert not small_bands
    assert torch.equal(got.indices, brute_force(x, 8, x, ref_includes_query=True)[1])


def test_calculator_values_equal_the_row_by_row_search(monkeypatch: pytest.MonkeyPatch, small_bands: list[int]) -> None:
    g = torch.Generator().manual_seed(14)
    labels = torch.randint(0, 20, (2300,), generator=g)
    x = torch.randn(20, 8, generator=g)[labels] + torch.randn(2300, 8, generator=g)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), knn_func=ExactKNN(block_size=128)
    )
    got = calculator.get_accuracy(x, labels)
    assert small_bands
    monkeypatch.setattr(ss, "compiled_filter", lambda: None)
    want = calculator.get_accuracy(x, labels)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


def _decode(hits: np.ndarray) -> list[tuple[int, float, int]]:
    """(row field, key, index) of packed hits, in the order they sort as unsigned integers."""
    out = []
    for value in np.sort(hits.view(np.uint64)).tolist():
        ordered = (value >> 22) & 0xFFFFFFFF
        bits = ordered ^ 0x80000000 if ordered & 0x80000000 else ~ordered & 0xFFFFFFFF
        key = float(np.array([bits], dtype=np.uint32).view(np.float32)[0])
        out.append((value >> 54, key, value & ((1 << 22) - 1)))
    return out


def test_packed_hits_sort_by_row_then_key_then_index() -> None:
    # the tile pass run as plain Python: every hit decodes to its row, key and index, in that order
    keys = np.array([[3.0, -1.0, 0.5, -0.0], [0.0, 2.0, -2.5, 0.5]], dtype=np.float32)
    row_bounds = np.array([1.0, 2.5], dtype=np.float32)
    col_bounds = np.array([-0.5, 10.0, 0.0, 1.0], dtype=np.float32)
    row_hits, col_hits = np.zeros(16, dtype=np.int64), np.zeros(16, dtype=np.int64)
    num_row, num_col = ss._filter_tile(keys, row_bounds, col_bounds, True, -1, 5, 100, 40, row_hits, 0, col_hits, 0)
    assert (num_row, num_col) == (7, 5)

    # row side: the band's rows 5 and 6, columns 40-43 (-0.0 is stored as +0.0)
    assert _decode(row_hits[:num_row]) == [
        (5, -1.0, 41),
        (5, 0.0, 43),
        (5, 0.5, 42),
        (6, -2.5, 42),
        (6, 0.0, 40),
        (6, 0.5, 43),
        (6, 2.0, 41),
    ]
    # column side: the column within its band, the key, the row's index
    assert _decode(col_hits[:num_col]) == [(1, -1.0, 100), (1, 2.0, 101), (2, -2.5, 101), (3, 0.0, 100), (3, 0.5, 101)]
    assert str(np.float32(-0.0).view(np.int32)) != "0"  # the input really held a negative zero


def _row_pass(
    keys: np.ndarray,
    bounds: np.ndarray,
    own_row0: int,
    local_row0: int,
    col0: int,
    hits: np.ndarray,
    num: int,
    tile_pass: Callable[..., tuple[int, int]] = ss._filter_tile,
) -> int:
    """The tile pass on the row side alone, as the row-by-row search runs it; returns the new count."""
    no_hits = np.empty(0, dtype=np.int64)
    return tile_pass(keys, bounds, bounds, False, own_row0, local_row0, 0, col0, hits, num, no_hits, 0)[0]


@pytest.mark.parametrize("own", [False, True])
def test_row_pass_finds_every_key_below_its_bound(own: bool) -> None:
    # the row pass run as plain Python, against a loop; widths that are not multiples of 8, hits in every
    # byte of a word (its lowest-set-bit decoding), the own column skipped when asked
    rng = np.random.default_rng(5)
    keys = rng.integers(-4, 4, size=(6, 21)).astype(np.float32)
    keys[0, :8] = -5.0  # a word whose eight bytes are all hits
    keys[1, 3] = -0.0
    bounds = np.array([0.0, 1.0, -3.0, 4.0, -10.0, 0.5], dtype=np.float32)
    hits = np.zeros(200, dtype=np.int64)
    own_row0, col0 = (30, 27) if own else (-1, 27)
    num = _row_pass(keys, bounds, own_row0, 3, col0, hits, 0)
    want = [
        (3 + i, float(keys[i, j]) + 0.0, col0 + j)
        for i in range(6)
        for j in range(21)
        if keys[i, j] < bounds[i] and not (own and own_row0 + i == col0 + j)
    ]
    assert num == len(want)
    assert _decode(hits[:num]) == sorted(want)
    if own:  # rows 0..5 are references 30..35: columns 3..8 of this block
        assert all(index != 30 + row - 3 for row, _, index in _decode(hits[:num]))


def test_row_pass_counts_past_a_full_buffer_and_the_compiled_pass_agrees() -> None:
    rng = np.random.default_rng(6)
    keys = rng.standard_normal((40, 300)).astype(np.float32)
    bounds = np.quantile(keys, 0.1, axis=1).astype(np.float32)
    small = np.zeros(10, dtype=np.int64)
    total = _row_pass(keys, bounds, -1, 0, 0, small, 0)
    assert total == int((keys < bounds[:, None]).sum()) > small.shape[0]
    full = np.zeros(total, dtype=np.int64)
    assert _row_pass(keys, bounds, -1, 0, 0, full, 0) == total
    assert np.array_equal(small, full[:10])  # writes stop at the end, in order
    kernels = ss.compiled_filter()
    assert kernels is not None
    compiled = np.zeros(total, dtype=np.int64)
    assert _row_pass(keys, bounds, -1, 0, 0, compiled, 0, kernels.tile) == total
    assert np.array_equal(compiled, full)


def test_first_k_decodes_each_rows_smallest_hits() -> None:
    keys = np.array([[2.0, -1.0, 0.5], [0.0, -0.0, 3.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    hits = np.zeros(9, dtype=np.int64)
    num = _row_pass(keys, np.array([9.0, 9.0, 0.0], dtype=np.float32), -1, 4, 100, hits, 0)
    ordered = np.sort(hits[:num].view(np.uint64))
    got_keys, got_idx = np.zeros((3, 2), dtype=np.float32), np.zeros((3, 2), dtype=np.int64)
    counts = np.zeros(3, dtype=np.int64)
    ss._first_k(ordered, 4, got_keys, got_idx, counts)
    assert counts.tolist() == [3, 3, 0]  # the third row has no key below 0
    assert got_keys[:2].tolist() == [[-1.0, 0.5], [0.0, 0.0]]
    assert got_idx[:2].tolist() == [[101, 102], [100, 101]]  # equal keys (0.0 and -0.0) by index


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("setting", ["separate", "extends"])
def test_row_by_row_pass_in_short_steps_with_growing_buffers(
    workers: int, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # steps of 100 references (not a multiple of 8, the last one shorter), room for 64 hits per row at first
    monkeypatch.setattr(ss, "_ROW_STEP", 100)
    monkeypatch.setattr(ss, "_ROOM_PER_NEIGHBOUR", 0)
    calls = []
    original = ss.topk_below_bounds
    monkeypatch.setattr(ss, "topk_below_bounds", lambda *a: calls.append(1) or original(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(workers)
    try:
        x = integer_points(1900, 3, seed=15)
        if setting == "separate":
            query, reference, includes = x[:700], x[700:], False
        else:
            query, reference, includes = x[:700], x, True
        got = knn(query, 90, reference, ref_includes_query=includes, block_size=64)
    finally:
        torch.set_num_threads(before)
    assert calls
    want_dist, want_idx = brute_force(query, 90, reference, ref_includes_query=includes)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)
