"""faiss runs single-threaded in these tests: on a busy machine its OpenMP threads spin-wait for each other
and a small HNSW build slows down twenty-fold. Results do not depend on the thread count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _single_threaded_faiss() -> Iterator[None]:
    try:
        import faiss
    except ImportError:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
