"""dmlkit.evaluation.knn against brute force (torch.cdist + stable sort) and the loop oracle in tests/reference."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch

from dmlkit.evaluation import ExactKNN, KnnDistance, iter_knn, knn
from dmlkit.types import Neighbors
from tests.reference import retrieval as ref

# the module, not the function that dmlkit.evaluation exports under the same name
knn_module = importlib.import_module("dmlkit.evaluation.knn")


def brute_force(
    query: torch.Tensor, k: int, reference: torch.Tensor, ref_includes_query: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full float64 distance matrix, own rows set to +inf, stable sort (ties by ascending index)."""
    dist = torch.cdist(query.double(), reference.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if ref_includes_query:
        own = torch.arange(query.shape[0])
        dist[own, own] = float("inf")
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return dist.gather(1, order), order


def integer_points(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integer coordinates: many exact ties and duplicates, and float32 arithmetic on them is exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, d), generator=g).float()


@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 4096])
@pytest.mark.parametrize(
    ("num_query", "num_extra", "k"),
    [(23, 0, 1), (23, 0, 5), (23, 0, 22), (23, 17, 1), (23, 17, 39), (1, 5, 2), (30, 11, 40)],
)
def test_ref_includes_query_matches_brute_force_with_ties(
    num_query: int, num_extra: int, k: int, block_size: int
) -> None:
    # The reference is the queries followed by `num_extra` more rows; k = N - 1 is the case (23, 0, 22).
    query = integer_points(num_query, 3, seed=num_query + num_extra)
    reference = torch.cat([query, integer_points(num_extra, 3, seed=99)])
    got = knn(query, k, reference, ref_includes_query=True, block_size=block_size)
    want_dist, want_idx = brute_force(query, k, reference, ref_includes_query=True)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block_size", [1, 4, 9, 64])
@pytest.mark.parametrize("k", [1, 6, 31])
def test_separate_reference_matches_brute_force_with_ties(k: int, block_size: int) -> None:
    query = integer_points(19, 2, seed=1)
    reference = integer_points(31, 2, seed=2)
    got = knn(query, k, reference, block_size=block_size)
    want_dist, want_idx = brute_force(query, k, reference, ref_includes_query=False)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


def test_reference_none_is_the_query_set_without_self() -> None:
    x = integer_points(40, 2, seed=3)
    got = knn(x, 7, block_size=6)
    want = knn(x, 7, x, ref_includes_query=True, block_size=6)
    assert torch.equal(got.indices, want.indices)
    assert not (got.indices == torch.arange(40)[:, None]).any()


def test_duplicates_at_distance_zero_are_kept_and_self_removed_by_index() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [5.0, 5.0]])
    got = knn(x, 2, block_size=2)
    # Rows 0-2 are identical: each sees the other two at distance 0, lower index first.
    assert got.indices.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1]]
    assert got.distances[:3].tolist() == [[0.0, 0.0]] * 3
    assert got.distances[3].tolist() == [5.0, 5.0]


def test_random_continuous_data_random_block_sizes() -> None:
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        nq, nr = (int(v) for v in torch.randint(1, 50, (2,), generator=g))
        query = torch.randn(nq, 5, generator=g, dtype=torch.float64)
        reference = torch.randn(nr, 5, generator=g, dtype=torch.float64)
        k = int(torch.randint(1, nr + 1, (), generator=g))
        block = int(torch.randint(1, 60, (), generator=g))
        got = knn(query, k, reference, block_size=block)
        want_dist, want_idx = brute_force(query, k, reference, ref_includes_query=False)
        assert torch.equal(got.indices, want_idx)
        torch.testing.assert_close(got.distances, want_dist, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("points", "k"), [("integer", 10), ("integer", 150), ("continuous", 7)])
def test_larger_searches_match_brute_force(points: str, k: int) -> None:
    # Enough blocks for the running top-k to fill up, so later blocks take the path that gathers only
    # the entries below the running k-th; with 25 distinct integer points, ties at that k-th are everywhere.
    if points == "integer":
        x = integer_points(700, 2, seed=13)
    else:
        x = torch.randn(700, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    got = knn(x, k, block_size=64)
    want_dist, want_idx = brute_force(x, k, x, ref_includes_query=True)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("ref_includes_query", [False, True])
def test_matches_loop_oracle(distance: str, ref_includes_query: bool) -> None:
    g = torch.Generator().manual_seed(5)
    query = torch.randn(17, 4, generator=g, dtype=torch.float64)
    reference = torch.randn(26, 4, generator=g, dtype=torch.float64)
    if ref_includes_query:
        reference = torch.cat([query, reference])
    got = knn(query, 9, reference, ref_includes_query, distance=distance, block_size=5)
    want_values, want_indices = ref.knn(query.tolist(), reference.tolist(), 9, ref_includes_query, distance)
    assert got.indices.tolist() == want_indices
    torch.testing.assert_close(got.distances, torch.tensor(want_values, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "inner_product"])
def test_similarities_sorted_largest_first_with_index_ties(distance: str) -> None:
    x = integer_points(35, 3, seed=6)
    got = knn(x, 12, block_size=8, distance=distance)
    if distance == "cosine":
        unit = torch.nn.functional.normalize(x.double(), dim=1)
        sim = unit @ unit.T
    else:
        sim = x.double() @ x.double().T
    sim.fill_diagonal_(-float("inf"))
    order = torch.sort(-sim, dim=1, stable=True).indices[:, :12]
    torch.testing.assert_close(got.distances.double(), sim.gather(1, order), rtol=0, atol=1e-6)
    if distance == "inner_product":  # exact integer arithmetic: ties are exact, so indices must match
        assert torch.equal(got.indices, order)
    assert (got.distances[:, :-1] >= got.distances[:, 1:]).all()


def test_independent_of_block_size() -> None:
    x = integer_points(57, 2, seed=7)
    results = [knn(x, 10, block_size=b) for b in (3, 5, 13, 56, 57, 1000)]
    for other in results[1:]:
        assert torch.equal(other.indices, results[0].indices)
        assert torch.equal(other.distances, results[0].distances)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_computes_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 6, generator=g).to(dtype)
    got = knn(x, 5, block_size=16)
    want = knn(x.float(), 5, block_size=16)
    assert got.distances.dtype == torch.float32
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.distances, want.distances)


def test_output_types_and_no_graph() -> None:
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    got = knn(x, 3)
    assert isinstance(got, Neighbors)
    assert got.distances.dtype == torch.float64 and got.indices.dtype == torch.long
    assert got.distances.shape == got.indices.shape == (10, 3)
    assert not got.distances.requires_grad


def test_distance_accepts_enum_members() -> None:
    x = integer_points(12, 2, seed=9)
    assert torch.equal(knn(x, 3, distance=KnnDistance.COSINE).indices, knn(x, 3, distance="cosine").indices)


def test_empty_query() -> None:
    got = knn(torch.zeros(0, 4), 2, torch.randn(5, 4))
    assert got.distances.shape == got.indices.shape == (0, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = integer_points(300, 4, seed=10)
    got = knn(x.cuda(), 9, block_size=64)
    want = knn(x, 9, block_size=64)
    assert got.indices.device.type == "cuda"
    assert torch.equal(got.indices.cpu(), want.indices)


@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
def test_wide_panels_of_accelerators_match_brute_force_with_ties(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the layout taken on a GPU, forced on the CPU; a small cell budget makes several query blocks
    monkeypatch.setattr(knn_module, "_ACCELERATOR_PANEL_CELLS", 5000)
    x = integer_points(700, 3, seed=23)
    query, reference, includes = {"self": (x, x, True), "separate": (x[:200], x[200:], False)}.get(
        setting, (x[:200], x, True)
    )
    blocks = list(knn_module._iter_checked(query, 15, reference, includes, KnnDistance.EUCLIDEAN, 64, wide_panels=True))
    assert len(blocks) == -(-query.shape[0] // (5000 // reference.shape[0]))
    got_idx = torch.cat([found.indices for _, found in blocks])
    got_dist = torch.cat([found.distances for _, found in blocks])
    want_dist, want_idx = brute_force(query, 15, reference, ref_includes_query=includes)
    assert torch.equal(got_idx, want_idx)
    torch.testing.assert_close(got_dist.double(), want_dist, rtol=0, atol=1e-6)


X = torch.randn(5, 3)
ERROR_CASES = [
    (lambda: knn(X, 5), ValueError, "knn: `k` must be <= the number of available references (4), got 5."),
    (lambda: knn(X, 0, torch.randn(4, 3)), ValueError, "knn: `k` must be an integer >= 1, got 0."),
    (lambda: knn(X, 2.0), TypeError, "knn: `k` must be an integer, got 2.0."),
    (
        lambda: knn(X, 3, torch.randn(2, 3)),
        ValueError,
        "knn: `k` must be <= the number of available references (2), got 3.",
    ),
    (lambda: knn(X, 1, block_size=0), ValueError, "knn: `block_size` must be an integer >= 1, got 0."),
    (
        lambda: knn(X, 1, distance="cosin"),
        ValueError,
        "knn: `distance` must be one of 'euclidean', 'cosine', 'inner_product', got 'cosin'. Did you mean 'cosine'?",
    ),
    (
        lambda: knn(X, 1, torch.randn(4, 2)),
        ValueError,
        "knn: `reference` must be of shape (num_references, 3) like `query`, got (4, 2).",
    ),
    (
        lambda: knn(X, 1, torch.randn(8, 3), ref_includes_query=True),
        ValueError,
        "knn: `reference` must be a tensor whose first len(query) = 5 rows equal `query` when ref_includes_query, "
        "got 'a tensor that does not start with `query`'.",
    ),
    (
        lambda: knn(X, 1, X[:3], ref_includes_query=True),
        ValueError,
        "knn: `reference` must be a tensor whose first len(query) = 5 rows equal `query`",
    ),
    (lambda: knn([[1.0]], 1), TypeError, "knn: `query` must be a torch.Tensor, got list."),
    (lambda: knn(torch.tensor([[float("nan")], [1.0]]), 1), ValueError, "knn: `query` must be finite"),
    (lambda: knn(X, 1, torch.ones(4, 3, dtype=torch.long)), TypeError, "knn: `reference` must be a floating-point"),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text)):
        call()


def test_prefix_reference_is_accepted() -> None:
    x = integer_points(6, 2, seed=11)
    reference = torch.cat([x, integer_points(4, 2, seed=12)])
    assert knn(x, 9, reference, ref_includes_query=True).indices.shape == (6, 9)


def test_memory_stays_bounded_on_a_large_search() -> None:
    # 8000 x 8000 float32 distances would take 256 MB; blocks of 1024 need a few MB. Peak resident memory
    # of a fresh process is compared before and after the search.
    code = textwrap.dedent(
        """
        import resource, torch
        torch.set_num_threads(1)
        from dmlkit.evaluation import knn
        x = torch.randn(8000, 8, generator=torch.Generator().manual_seed(0))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = knn(x, 5, block_size=1024)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert result.indices.shape == (8000, 5)
        print(after - before)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    growth_kib = int(done.stdout.strip())
    assert growth_kib < 128 * 1024, f"peak memory grew by {growth_kib} KiB"


# ---------------------------------------------------------------- panel path, iter_knn, ExactKNN, overflow


@pytest.mark.parametrize(("k", "block_size"), [(10, 5), (39, 7), (40, 64), (20, 1000)])
def test_panel_path_for_large_k_matches_brute_force(k: int, block_size: int) -> None:
    # k >= a quarter of the references selects from a panel of keys per query block instead of streaming.
    x = integer_points(41, 2, seed=14)
    got = knn(x, k, block_size=block_size)
    want_dist, want_idx = brute_force(x, k, x, ref_includes_query=True)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


def test_iter_knn_blocks_concatenate_to_knn() -> None:
    x = integer_points(600, 3, seed=15)
    starts, parts = zip(*[(start, found) for start, found in iter_knn(x, 4, block_size=50)], strict=True)
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:], strict=False))
    whole = knn(x, 4, block_size=50)
    assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)


def test_iter_knn_checks_arguments_before_the_first_block() -> None:
    with pytest.raises(ValueError, match=re.escape("knn: `k` must be an integer >= 1, got 0.")):
        iter_knn(X, 0)


def test_exact_knn_is_a_pml_knn_func() -> None:
    x = integer_points(30, 2, seed=16)
    distances, indices = ExactKNN(distance="cosine", block_size=8)(x, 3, x, True)
    want = knn(x, 3, x, True, distance="cosine")
    assert torch.equal(indices, want.indices) and torch.equal(distances, want.distances)
    with pytest.raises(ValueError, match=re.escape("ExactKNN: `block_size` must be an integer >= 1, got 0.")):
        ExactKNN(block_size=0)


def test_huge_embeddings_fall_back_to_float64() -> None:
    # float32 keys overflow for |x| ~ 1e20; the block is redone in float64 and every neighbour is real.
    x = torch.tensor([[3e20, 0.0], [-3e20, 0.0], [0.0, 0.0], [1e20, 0.0]])
    got = knn(x, 3)
    assert (got.indices >= 0).all()
    assert got.indices[:, 0].tolist() == [3, 2, 3, 2]


# ---------------------------------------------------------------- thresholded search (sample bound, one pass)


@pytest.fixture(params=[1, 2], ids=["one-thread", "two-threads"])
def threads(request: pytest.FixtureRequest) -> object:
    # One thread compares with numpy, more threads with torch's clamped difference: both must agree.
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(knn_module, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(knn_module, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
def test_thresholded_path_matches_brute_force_with_ties(
    threads: int, dtype: torch.dtype, setting: str, filter_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 900 integer points in 3-D take 125 distinct values: most keys are tied, and many rows are duplicates
    # (distance 0). float64 orders the hits with two stable sorts, float32 with one packed int64 sort; float32
    # filters each step with torch or with the compiled pass, float64 with torch.
    calls = filter_calls if dtype == torch.float32 else _count_calls(monkeypatch, "_topk_thresholded")
    x = integer_points(900, 3, seed=21).to(dtype)
    if setting == "self":
        query, reference, includes = x, x, True
    elif setting == "separate":
        query, reference, includes = x[:300], x[300:], False
    else:
        query, reference, includes = x[:300], x, True
    got = knn(query, 12, reference, ref_includes_query=includes, block_size=64)
    assert calls, "the thresholded path was not taken"
    want_dist, want_idx = brute_force(query, 12, reference, ref_includes_query=includes)
    assert torch.equal(got.indices, want_idx)
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-6)


def test_thresholded_path_matches_streamed_path_on_continuous_data(threads: int) -> None:
    # the same float32 keys either way, so the same neighbours and bitwise the same distances
    x = torch.randn(1500, 16, generator=torch.Generator().manual_seed(22))
    got = knn(x, 20, block_size=128)
    center = knn_module._Operand.center(x, KnnDistance.EUCLIDEAN, torch.float32)
    q = knn_module._Operand.queries(x, KnnDistance.EUCLIDEAN, torch.float32, center)
    prepared = knn_module._Operand.references(x, KnnDistance.EUCLIDEAN, torch.float32, center)
    keys, idx = knn_module._sorted(*knn_module._topk_streamed(q, prepared, 0, 20, True, KnnDistance.EUCLIDEAN, 128))
    assert torch.equal(got.indices, idx)
    assert torch.equal(got.distances, knn_module._keys_to_values(keys, x, KnnDistance.EUCLIDEAN, center))


@pytest.mark.parametrize("d", [1, 2, 8, 32])
def test_float32_points_far_from_the_origin_find_their_nearest_neighbours(d: int) -> None:
    # 1 + 0.01 * randn: without the shift to the centre, ||r||^2 - 2 q.r in float32 cannot tell the
    # neighbours apart (at d = 1, 180 of 300 nearest neighbours came out wrong)
    x = 1 + 0.01 * torch.randn(300, d, generator=torch.Generator().manual_seed(d))
    got = knn(x, 3)
    want_dist, want_idx = brute_force(x.double(), 3, x.double(), ref_includes_query=True)
    # distances near 0 keep the float32 rounding of ||q - c||^2 (about 1e-7 * 0.01^2) under the square root
    torch.testing.assert_close(got.distances.double(), want_dist, rtol=0, atol=1e-5)
    # a swap is allowed only between neighbours whose float64 distances agree to float32 precision
    swapped = (got.indices != want_idx).any(1)
    gaps = (want_dist[:, 1:] - want_dist[:, :-1]).min(1).values
    assert bool((gaps[swapped] < 1e-6).all()), int(swapped.sum())


def test_centre_keeps_integer_points_on_their_grid() -> None:
    x = integer_points(500, 3, seed=5) + 1000.0
    center = knn_module._Operand.center(x, KnnDistance.EUCLIDEAN, torch.float32)
    assert center is not None and bool((center == center.round()).all())
    assert bool(((x - center) == (x - center).round()).all())
    same = torch.full((10, 2), 7.5)
    assert torch.equal(knn_module._Operand.center(same, KnnDistance.EUCLIDEAN, torch.float32), torch.full((2,), 7.5))
    assert knn_module._Operand.center(x, KnnDistance.COSINE, torch.float32) is None
    denormal = torch.tensor([[0.0], [1e-44]])  # a spread in the denormals still gives a finite centre
    assert bool(torch.isfinite(knn_module._Operand.center(denormal, KnnDistance.EUCLIDEAN, torch.float32)).all())


@pytest.mark.parametrize("slice_rows", [7, 1000])
def test_centre_is_the_mean_rounded_to_a_power_of_two_below_the_spread(
    slice_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the spread is summed over slices of rows (several here with 7 rows a slice); against float64 formulas
    monkeypatch.setattr(knn_module, "_CENTER_ROWS", slice_rows)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(300, 4, generator=g) * torch.tensor([0.3, 3.0, 40.0, 1e-3]) + torch.tensor([5.2, -17.0, 900.0, 2.0])
    center = knn_module._Operand.center(x, KnnDistance.EUCLIDEAN, torch.float32)
    xd = x.double()
    grid = torch.exp2(torch.floor(torch.log2(xd.std(0, correction=0))))
    assert torch.equal(center.double(), torch.round(xd.mean(0) / grid) * grid)


def test_rows_below_k_hits_redo_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bound below every key leaves every row short: the block is redone by the streamed search.
    calls = _count_calls(monkeypatch, "_topk_streamed")
    monkeypatch.setattr(knn_module, "_sample_threshold", lambda q, *args: q.new_full((q.shape[0],), -1e30))
    x = integer_points(700, 2, seed=23)
    got = knn(x, 10, block_size=64)
    assert calls
    want_dist, want_idx = brute_force(x, 10, x, ref_includes_query=True)
    assert torch.equal(got.indices, want_idx)


def test_sample_bound_keeps_at_least_k_keys_at_or_below_it() -> None:
    g = torch.Generator().manual_seed(24)
    x = torch.randn(4000, 8, generator=g)
    q = knn_module._Operand.queries(x[:256], KnnDistance.EUCLIDEAN, torch.float32)
    prepared = knn_module._Operand.references(x, KnnDistance.EUCLIDEAN, torch.float32)
    sample_idx = torch.randperm(4000, generator=g)[:500]
    bound = knn_module._sample_threshold(q, prepared[sample_idx], sample_idx, 0, True, 30, 3999)
    keys = q @ prepared.T
    keys[torch.arange(256), torch.arange(256)] = float("inf")
    below = (keys < bound[:, None]).sum(1)
    assert (below >= 30).all()
    # and it is not the trivial bound: far fewer than all references survive
    assert below.float().mean() < 4000 / 4


def test_packed_values_order_by_row_then_key_then_index() -> None:
    keys = torch.tensor([3.5, -0.0, 0.0, -2.0, float("inf"), -float("inf"), 1e-40, -1e-40, 0.0, 3.5])
    rows = torch.tensor([0, 1, 1, 1, 0, 0, 255, 255, 0, 0])
    cols = torch.tensor([7, 9, 2, 5, 1, 3, 2**24 - 1, 4, 6, 0])
    packed = knn_module._packed(rows, keys, cols)
    order = packed.argsort()
    # oracle: sort by (row, key, index), with -0.0 and +0.0 equal
    want = sorted(range(10), key=lambda i: (int(rows[i]), float(keys[i]) + 0.0, int(cols[i])))
    assert order.tolist() == want
    back_keys, back_cols = knn_module._unpacked(packed)
    assert torch.equal(back_cols, cols)
    assert torch.equal(back_keys, keys + 0.0)  # -0.0 comes back as +0.0, every other key bit for bit
    assert torch.equal(knn_module._sort_packed(packed), packed.sort().values)


def test_bytes_nonzero_equals_nonzero() -> None:
    g = torch.Generator().manual_seed(25)
    for density in (0.0, 0.05, 0.5, 1.0):
        flags = torch.rand(8 * 37, generator=g) < density
        got = knn_module._bytes_nonzero(flags.view(torch.int64))
        assert torch.equal(got, flags.nonzero().squeeze(1))
