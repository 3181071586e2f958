"""Naive oracle for near-duplicate groups: every pair compared in float64, then groups by depth-first search."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["near_duplicate_groups_reference"]


def _linked(a: Sequence[float], b: Sequence[float], threshold: float, metric: str) -> bool:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    if metric == "inner_product":
        return dot >= threshold
    if metric == "cosine":
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        return dot / norm >= threshold
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))) <= threshold


def near_duplicate_groups_reference(rows: Sequence[Sequence[float]], threshold: float, metric: str) -> list[list[int]]:
    """Connected components of size >= 2 of the graph linking rows within ``threshold``; sorted."""
    n = len(rows)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if _linked(rows[i], rows[j], threshold, metric):
                neighbours[i].append(j)
                neighbours[j].append(i)
    seen = [False] * n
    groups = []
    for start in range(n):
        if seen[start]:
            continue
        seen[start] = True
        stack, group = [start], []
        while stack:
            node = stack.pop()
            group.append(node)
            for other in neighbours[node]:
                if not seen[other]:
                    seen[other] = True
                    stack.append(other)
        if len(group) >= 2:
            groups.append(sorted(group))
    return sorted(groups)
