"""Numerical verification of a shard chain against the unmodified fp32 model.

The host contract is the manifest's: multiply an input by its ``scale`` before feeding it, an output by its ``scale``
after reading it. ``run_chain`` follows exactly that, for any per-shard runner (ONNX Runtime, the RKNN simulator).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, ShardSpec

# Done-when thresholds (DESIGN.md): fp32 ONNX chain vs transformers, fp16 RKNN simulator chain vs transformers.
ONNX_MIN_COS = 0.99999
RKNN_MIN_COS = 0.999

ShardRunner = Callable[[ShardSpec, list[np.ndarray]], list[np.ndarray]]


class VerificationError(RuntimeError):
    """A shard or the chain is numerically off; the message names the shard and the cosine."""


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denominator = np.linalg.norm(a64) * np.linalg.norm(b64)
    if denominator == 0.0:
        return 1.0 if np.array_equal(a64, b64) else 0.0
    return float(np.dot(a64, b64) / denominator)


def run_in_host_units(shard: ShardSpec, run_shard: ShardRunner,
                      tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One shard as the host runs it: each input (taken from ``tensors`` by name) times its scale going in, each
    output times its scale coming out, so what it returns is in true units."""
    feeds = [(tensors[spec.name] * np.float32(spec.scale)).astype(np.float32) for spec in shard.inputs]
    outputs = run_shard(shard, feeds)
    return {spec.name: np.asarray(value, np.float32).reshape(spec.shape) * np.float32(spec.scale)
            for spec, value in zip(shard.outputs, outputs, strict=True)}


def run_chain(manifest: Manifest, run_shard: ShardRunner, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """All tensors the chain produces for one image, in host units (output scales applied)."""
    tensors: dict[str, np.ndarray] = {"pixel_values": pixel_values.astype(np.float32)}
    for shard in manifest.shards:
        tensors.update(run_in_host_units(shard, run_shard, tensors))
    return tensors


def onnx_runner(root: Path) -> ShardRunner:
    """Run shards with ONNX Runtime (CPU, fp32), sessions opened once, one at a time (so each gets every CPU)."""
    from ..backends.onnxruntime import create_session  # imports only onnxruntime and numpy

    threads = os.cpu_count() or 1
    sessions: dict[str, Any] = {}

    def run(shard: ShardSpec, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if shard.name not in sessions:
            sessions[shard.name] = create_session(root / shard.onnx, threads)
        session = sessions[shard.name]
        return session.run([spec.name for spec in shard.outputs],
                           {spec.name: value for spec, value in zip(shard.inputs, feeds, strict=True)})

    return run
