"""Contiguous min-max partition: shared by the builder (cut blocks into shards by MACs) and the scheduler (cut
shards into per-core stages by cost). Pure Python, so both layers may import it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def min_max_partition(weights: Sequence[float], parts: int) -> list[list[int]]:
    """Split indices 0..n-1 into ``parts`` contiguous non-empty groups minimising the heaviest group.

    Exact dynamic programme, O(parts * n^2) (n is at most a few dozen here); ties keep the earlier cut, so the
    result is deterministic. Raises ValueError unless 1 <= parts <= n.
    """
    count = len(weights)
    if not 1 <= parts <= count:
        raise ValueError(f"cannot split {count} items into {parts} non-empty groups")
    prefix = [0.0, *itertools.accumulate(float(w) for w in weights)]
    infinity = float("inf")
    # best[k][i]: the smallest possible heaviest group when the first i items form k groups; cut[k][i]: where the
    # last of those groups starts.
    best = [[infinity] * (count + 1) for _ in range(parts + 1)]
    cut = [[0] * (count + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, count + 1):
            for j in range(k - 1, i):
                candidate = max(best[k - 1][j], prefix[i] - prefix[j])
                if candidate < best[k][i]:
                    best[k][i], cut[k][i] = candidate, j
    groups: list[list[int]] = []
    stop = count
    for k in range(parts, 0, -1):
        start = cut[k][stop]
        groups.append(list(range(start, stop)))
        stop = start
    return groups[::-1]
