"""When the index gets an approximate nearest-neighbour index, and its parameters.

Below ``ANN_MIN_ROWS`` rows an exact (brute-force) scan is quick enough and never misses: it reads every vector
(3 KB a row at 768-d): 20-30 ms at 10^4 rows, 0.4-0.65 s at 10^5 and 4.3 s at 10^6 on 2 busy cores, where the
IVF-PQ index answers in 15-25 ms (benchmarks/fleet_bench.py, benchmarks/RESULTS.md). From there on
``index_bags`` builds LanceDB's IVF-PQ index (cosine), and folds later rows into it; a search probes
``NPROBES`` partitions and re-ranks ``REFINE_FACTOR`` x top candidates on their full vectors (50: at 10 it missed
one true top-10 frame in six on clustered data, benchmarks/fleet_bench.py), so the scores it prints
are exact and only the candidate set is approximate.
"""

from __future__ import annotations

import math
from typing import Any

ANN_MIN_ROWS = 50_000
METRIC = "cosine"
NPROBES = 32
REFINE_FACTOR = 50
# Rows added since the index was trained, as a share of the rows it holds, past which it is trained again (new
# bags can come from new places, so the old partitions may not fit them).
RETRAIN_SHARE = 0.5


def ivf_pq_parameters(rows: int, dim: int) -> dict[str, Any]:
    """IVF-PQ for ``rows`` vectors of ``dim``: about sqrt(rows) partitions (LanceDB's advice) and 8-float PQ
    sub-vectors (96 codes for 768-d), the finest split whose codebooks still train in a few minutes."""
    partitions = max(16, min(4096, round(math.sqrt(rows))))
    sub_vectors = next(d for d in (dim // 8, dim // 4, dim // 2, dim, 1) if d >= 1 and dim % d == 0)
    return {"index_type": "IVF_PQ", "metric": METRIC, "num_partitions": partitions, "num_sub_vectors": sub_vectors}


def vector_index(table: Any) -> Any | None:
    """The table's index on ``vector``, or None."""
    return next((index for index in table.list_indices() if "vector" in index.columns), None)


def ensure_ann_index(table: Any, dim: int, min_rows: int = ANN_MIN_ROWS) -> str | None:
    """Build, extend or retrain the IVF-PQ index as the table's size asks; says what it did (None: nothing)."""
    rows = table.count_rows()
    if rows < min_rows:
        return None
    index = vector_index(table)
    if index is not None:
        stats = table.index_stats(index.name)
        unindexed = getattr(stats, "num_unindexed_rows", 0)
        if unindexed == 0:
            return None
        if unindexed < RETRAIN_SHARE * getattr(stats, "num_indexed_rows", rows):
            table.optimize()  # adds the new rows to the trained partitions
            return f"added {unindexed} rows to the IVF-PQ index"
    parameters = ivf_pq_parameters(rows, dim)
    table.create_index(vector_column_name="vector", replace=True, **parameters)
    return (f"built the IVF-PQ index over {rows} rows ({parameters['num_partitions']} partitions, "
            f"{parameters['num_sub_vectors']} sub-vectors)")
