"""find_near_duplicates: planted duplicates, no false merges, exact vs faiss, a brute-force oracle, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.index import find_near_duplicates
from tests.reference.near_duplicates import near_duplicate_groups_reference


def _planted(
    seed: int = 0, n_base: int = 60, dim: int = 16, noise: float = 0.01
) -> tuple[torch.Tensor, list[list[int]]]:
    """Random directions (far apart in 16-D) plus noisy copies of some of them; returns rows and true groups."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(n_base, dim, generator=gen), dim=1)
    copies_of = [3, 3, 7, 10, 10, 10, 42]  # row 3 twice, 10 three times ...
    copies = base[copies_of] + noise * torch.randn(len(copies_of), dim, generator=gen)
    rows = torch.cat([base, copies])
    perm = torch.randperm(rows.shape[0], generator=gen)
    rows = rows[perm]
    where = perm.argsort()  # new position of old row i
    truth: dict[int, list[int]] = {}
    for k, original in enumerate(copies_of):
        truth.setdefault(original, [int(where[original])]).append(int(where[n_base + k]))
    return rows, sorted(sorted(g) for g in truth.values())


def test_planted_noisy_copies_are_found() -> None:
    rows, truth = _planted()
    assert find_near_duplicates(rows, 0.95) == truth
    assert find_near_duplicates(rows.double(), 0.95) == truth
    assert find_near_duplicates(rows.numpy(), 0.95) == truth


def test_l2_and_inner_product_metrics() -> None:
    rows, truth = _planted()
    assert find_near_duplicates(rows, 0.2, metric="l2") == truth
    assert find_near_duplicates(rows, 0.9, metric="inner_product") == truth


def test_no_false_merges_at_a_strict_threshold() -> None:
    rows, truth = _planted()
    exact_copies = torch.cat([rows, rows[:2]])  # two exact duplicates
    n = rows.shape[0]
    # at cosine 1 - 1e-6 only the exact copies are linked, not the noisy ones
    assert find_near_duplicates(exact_copies, 1 - 1e-6) == [[0, n], [1, n + 1]]
    # the noisy copies are about 0.04 away; the exact search's expanded distances are exact to ~1e-3 in float32
    assert find_near_duplicates(exact_copies, 0.01, metric="l2") == [[0, n], [1, n + 1]]
    # random directions never reach cosine 0.95 with each other: every group is a planted one
    groups = find_near_duplicates(rows, 0.95)
    assert all(group in truth for group in groups)


def test_groups_are_transitive_chains_and_sorted() -> None:
    # 0-1 and 1-2 are within 1.1, 0-2 is not: one group by chaining; 3 and 4 form another
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0], [10.5], [30.0]])
    assert find_near_duplicates(rows, 1.1, metric="l2") == [[0, 1, 2], [3, 4]]
    assert find_near_duplicates(rows[[3, 5, 0, 4, 2, 1]], 1.1, metric="l2") == [[0, 3], [2, 4, 5]]


def test_exact_and_faiss_give_the_same_groups() -> None:
    pytest.importorskip("faiss")
    rows, truth = _planted(seed=4)
    for metric, threshold in [("cosine", 0.95), ("l2", 0.2), ("inner_product", 0.9)]:
        exact = find_near_duplicates(rows, threshold, metric=metric)
        assert find_near_duplicates(rows, threshold, metric=metric, backend="faiss") == exact == truth


def test_matches_a_brute_force_oracle_on_random_clusters() -> None:
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    for metric, threshold in [("cosine", 0.97), ("l2", 0.6), ("inner_product", 2.0)]:
        want = near_duplicate_groups_reference(rows.tolist(), threshold, metric)
        assert want, "the oracle should find groups at these thresholds"
        got = find_near_duplicates(rows, threshold, metric=metric, query_batch_size=7, block_size=5)
        assert got == want


def test_small_inputs_have_no_groups() -> None:
    assert find_near_duplicates(torch.zeros(0, 3), 0.5) == []
    assert find_near_duplicates(torch.ones(1, 3), 0.5) == []
    assert find_near_duplicates(torch.eye(3), 0.5) == []


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "error", "match"),
    [
        (torch.ones(4), {}, ValueError, r"find_near_duplicates: `embeddings` must be a 2-D tensor"),
        (
            torch.tensor([[1.0, float("nan")], [1.0, 0.0]]),
            {},
            ValueError,
            r"`embeddings` must be finite \(no NaN or Inf\).*, got 1 row\(s\) containing NaN or Inf\.",
        ),
        (torch.ones(2, 2, dtype=torch.long), {}, TypeError, r"`embeddings` must be a floating-point tensor"),
        ([[1.0, 0.0]], {}, TypeError, r"find_near_duplicates: `embeddings` must be a torch.Tensor, got list\."),
        (torch.eye(2), {"threshold": 1.5}, ValueError, r"`threshold` must be a number >= -1 and <= 1, got 1.5\."),
        (torch.eye(2), {"threshold": -0.1, "metric": "l2"}, ValueError, r"`threshold` must be a number >= 0, got -0.1"),
        (torch.eye(2), {"threshold": float("nan")}, ValueError, r"`threshold` must be a number, not NaN, got nan\."),
        (
            torch.eye(2),
            {"threshold": float("inf"), "metric": "l2"},
            ValueError,
            r"`threshold` must be finite, got inf\.",
        ),
        (torch.eye(2), {"threshold": "0.9"}, TypeError, r"`threshold` must be a number, got '0.9'\."),
        (torch.eye(2), {"metric": "cos"}, ValueError, r"`metric` must be one of .*'cosine'.*Did you mean 'cosine'"),
        (torch.eye(2), {"backend": "faiss-flat"}, ValueError, r"`backend` must be one of 'exact', 'faiss', got"),
        (torch.eye(2), {"query_batch_size": 0}, ValueError, r"`query_batch_size` must be an integer >= 1, got 0\."),
    ],
)
def test_bad_input(embeddings: object, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    arguments: dict[str, object] = {"threshold": 0.9, **kwargs}
    with pytest.raises(error, match=match):
        find_near_duplicates(embeddings, **arguments)  # type: ignore[arg-type]


def test_numpy_float_input_is_accepted() -> None:
    rows = np.array([[1.0, 0.0], [1.0, 1e-4], [0.0, 1.0]])
    assert find_near_duplicates(rows, 0.999) == [[0, 1]]
