"""Compile one ONNX shard with rknn-toolkit2 and run it on the x86 simulator in the same process.

rknn-toolkit2 is imported lazily (slow, noisy, x86/aarch64 workstation only). A model loaded back with load_rknn
cannot run on the simulator, so verification happens here, right after build, on the instance that compiled it.
The toolkit prints to the process's stdout/stderr file descriptors; they are captured while it works and shown
only when something fails.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rk_siglip_ros.builder.barrier import disabled_rules
from rk_siglip_ros.builder.options import BuildOptions
from rk_siglip_ros.builder.shard_modules import PlannedShard
from rk_siglip_ros.builder.verify import RunShard, final_cosines, verify_shard
from rk_siglip_ros.errors import RunFailedError
from rk_siglip_ros.manifest import PIXEL_INPUT, ShardSpec, StageSpec
from rk_siglip_ros.runtime.backends.rknnlite import input_data_format


class RknnError(RunFailedError, RuntimeError):
    """rknn-toolkit2 refused a shard; the message carries the tail of its log."""


@contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Send fd 1 and 2 to a temp file for the duration; the yielded list receives the captured text afterwards."""
    captured: list[str] = []
    # The toolkit also trips numpy/onnx deprecation warnings by the thousand; they say nothing about our graphs.
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _tail(log: list[str], lines: int = 15) -> str:
    return "\n".join("".join(log).strip().splitlines()[-lines:])


@dataclass
class CompiledShard:
    """A compiled shard, live on the simulator until release()."""

    rknn: Any
    path: Path
    compile_s: float
    shard: ShardSpec

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        data_format = input_data_format(self.shard)  # the same rule the board's RKNN-Lite backend feeds by
        outputs = None
        with _captured_output() as log:
            try:
                outputs = self.rknn.inference(inputs=inputs, data_format=data_format)
            except ValueError as error:  # the toolkit wraps its own failures in ValueError
                log.append(str(error))
        if outputs is None:
            raise RknnError(f"{self.path.name}: simulator inference failed:\n{_tail(log)}")
        return [np.asarray(output, np.float32) for output in outputs]

    def release(self) -> None:
        self.rknn.release()


def compile_shard(onnx_path: Path, rknn_path: Path, target: str, dtype: str, dataset: Path | None,
                  disable_rules: list[str], shard: ShardSpec) -> CompiledShard:
    """load_onnx + build + export_rknn + init_runtime (simulator). The caller must release() the result."""
    with _captured_output() as log:
        from rknn.api import RKNN

        rknn = RKNN(verbose=False)
    options: dict[str, Any] = {"target_platform": target}
    if disable_rules:
        options["disable_rules"] = disable_rules
    steps = (
        ("config", lambda: rknn.config(**options)),
        ("load_onnx", lambda: rknn.load_onnx(model=str(onnx_path))),
        ("build", lambda: rknn.build(do_quantization=dtype == "int8", dataset=str(dataset) if dataset else None)),
        ("export_rknn", lambda: rknn.export_rknn(str(rknn_path))),
        ("init_runtime", lambda: rknn.init_runtime()),
    )
    start = time.perf_counter()
    compile_s = 0.0
    for step, call in steps:
        status = None
        with _captured_output() as log:
            try:
                status = call()
            except ValueError as error:  # the toolkit reports many failures as ValueError with its traceback
                log.append(str(error))
        if status != 0:
            rknn.release()
            raise RknnError(f"{onnx_path.name}: rknn-toolkit2 {step} failed (status {status}):\n{_tail(log)}")
        if step == "export_rknn":
            compile_s = time.perf_counter() - start
    return CompiledShard(rknn, rknn_path, compile_s, shard)


def compile_and_verify(plans: list[PlannedShard], folder: Path, options: BuildOptions,
                       references: list[dict[str, np.ndarray]], images: list[np.ndarray],
                       datasets: dict[str, Path], minimum: float, progress: bool,
                       stages: list[StageSpec] | None = None) -> dict[str, float] | None:
    """Compile each shard, verify it on the simulator (alone and chained; with ``stages``, as every part that uses
    it), release it before the next one."""
    chains = [{PIXEL_INPUT: image} for image in images]
    for plan in tqdm(plans, desc=f"{'compile rknn':<14}", unit="shard", file=sys.stderr, disable=not progress):
        plan.spec.rknn = f"{plan.spec.name}.rknn"
        compiled = compile_shard(folder / plan.spec.onnx, folder / plan.spec.rknn, options.target, options.dtype,
                                 datasets.get(plan.spec.name), disabled_rules(options.barrier), plan.spec)
        try:
            plan.stats["compile_s"] = compiled.compile_s
            plan.stats["rknn_bytes"] = (folder / plan.spec.rknn).stat().st_size
            if options.verify:
                run_on_simulator: RunShard = lambda _spec, feeds, shard=compiled: shard.run(feeds)  # noqa: E731
                verify_shard(plan, run_on_simulator, references, chains, "rknn_sim", minimum, stages)
        finally:
            compiled.release()
    return final_cosines(plans, chains, references, "rknn_sim", minimum) if options.verify else None
