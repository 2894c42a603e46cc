"""What every backend provides: load one shard onto one core, run it, release it.

A backend never sees images or scheduling; the encoder feeds it named float32 tensors (host scales already applied)
and the scheduler decides which core runs which shard when. A core is an NPU core index, or a tuple of indices for one
context spanning several cores (the ``allcores`` mode).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import Manifest, ShardSpec

# One core index, or several for one context spanning them (RKNN core mask NPU_CORE_0_1_2).
NPU_CORES = (0, 1, 2)  # the RK3588's three NPU cores: the default wherever cores are chosen
Core = int | tuple[int, ...]


def core_indices(core: Core) -> tuple[int, ...]:
    """The NPU cores a context runs on: ``(core,)`` for one core, the group for an all-cores context."""
    return core if isinstance(core, tuple) else (core,)


def format_core(core: Core) -> str:
    """"core 1" or "cores 0-1-2"."""
    return f"cores {'-'.join(map(str, core))}" if isinstance(core, tuple) else f"core {core}"


class BackendError(UserError, RuntimeError):
    """A backend cannot be used here (missing runtime, wrong board, incompatible model); the message says what to do."""


class ShardRunner(ABC):
    """One shard loaded for one core. ``run`` is called by one worker thread at a time."""

    def __init__(self, shard: ShardSpec, core: Core) -> None:
        self.shard = shard
        self.core = core

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named inputs (the shard's declared input names) -> named outputs (its declared output names)."""

    def close(self) -> None:  # noqa: B027 - most runners hold nothing that needs releasing
        """Release whatever the runner holds (NPU context, session)."""


class Backend(ABC):
    name: str = ""
    # Which shard files this backend reads, so the encoder verifies exactly those (None: it reads no files).
    file_kind: str | None = None

    @abstractmethod
    def load(self, manifest: Manifest, shard: ShardSpec, core: Core) -> ShardRunner:
        """Load ``shard`` pinned to ``core`` (a tuple: one context spanning those cores)."""

    def estimated_cost(self, manifest: Manifest, shard: ShardSpec) -> float:
        """Relative cost of a shard, used to balance pipeline stages; MACs unless the backend knows better."""
        return float(shard.macs)

    def set_concurrency(self, workers: int) -> None:  # noqa: B027 - only CPU backends care
        """How many shard runs may execute at once (CPU backends size their thread pools from it)."""


def declared_outputs(shard: ShardSpec, produced: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check a backend produced every declared output with the declared size, and reshape to the declared shape."""
    outputs = {}
    for spec in shard.outputs:
        if spec.name not in produced:
            raise BackendError(f"shard {shard.name} did not produce output {spec.name!r} (got {sorted(produced)})")
        array = np.asarray(produced[spec.name], dtype=np.float32)
        if array.size != int(np.prod(spec.shape)):
            raise BackendError(f"shard {shard.name} output {spec.name!r} has shape {array.shape}, the manifest "
                               f"declares {list(spec.shape)}; the shard file does not match its manifest")
        outputs[spec.name] = array.reshape(spec.shape)
    return outputs
