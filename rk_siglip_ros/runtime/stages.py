"""The host's side of a gathered stage (manifest v2 ``stages``): token rotation in, row slices out, all-gather.

A part's graph computes the first rows of its input; the host rotates the stage's input so that the part's slice
comes first. :class:`GatherBuffer` holds a gathered tensor twice over ([1, 2T, C]: rows T..2T-1 repeat rows 0..T-1),
so every rotation of it is a contiguous view: no copy per core and per layer, only the parts' rows written twice.
numpy only: the runtime and the builder's verification share it.
"""

from __future__ import annotations

import numpy as np

from rk_siglip_ros.manifest import PartSpec, TensorSpec


class GatherBuffer:
    """One gathered stage output being assembled from its parts' rows. Parts write disjoint rows, so the parts of a
    stage running at once on different cores may each :meth:`put` without a lock."""

    __slots__ = ("spec", "tokens", "_data")

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        _, self.tokens, width = spec.shape
        self._data = np.empty((1, 2 * self.tokens, width), dtype=np.float32)

    def put(self, part: PartSpec, output: np.ndarray) -> None:
        """Copy the part's rows (the first ``part.rows`` of its output) into place, in both halves."""
        assert part.start is not None and part.stop is not None
        rows = np.asarray(output, dtype=np.float32).reshape(1, -1, self._data.shape[2])[:, :part.rows]
        self._data[:, part.start:part.stop] = rows
        self._data[:, self.tokens + part.start:self.tokens + part.stop] = rows

    @property
    def value(self) -> np.ndarray:
        """The gathered tensor, [1, T, C] (a view)."""
        return self._data[:, :self.tokens]

    def rotated(self, rotate: int) -> np.ndarray:
        """The tensor with token ``rotate`` first: a contiguous [1, T, C] view."""
        return self._data[:, rotate:rotate + self.tokens]


def rotate_tokens(array: np.ndarray, rotate: int) -> np.ndarray:
    """``array`` ([1, T, C]) with token ``rotate`` first (a copy; :meth:`GatherBuffer.rotated` avoids it)."""
    return array if rotate == 0 else np.roll(array, -rotate, axis=1)


def part_feed(part: PartSpec, value: np.ndarray | GatherBuffer) -> np.ndarray:
    """What a part is fed from its stage's input (a plain tensor or a gather buffer)."""
    if isinstance(value, GatherBuffer):
        return value.rotated(part.rotate)
    return rotate_tokens(value, part.rotate)
