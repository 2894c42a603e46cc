"""RKNN-Lite backend (RK3588 board only): one RKNNLite context per (shard, core), pinned with core_mask.

A context for a group of cores (the ``allcores`` mode) gets the vendor's multi-core mask (NPU_CORE_0_1_2 for cores
0, 1, 2): the runtime then splits the ops it can split (conv-type ones) across those cores.

rknn-toolkit-lite2 ships aarch64 wheels only, so it is imported when this backend is opened, never at module import.
A .rknn built by toolkit X needs librknnrt >= X on the board; the manifest records X and every context checks the
runtime it got against it before the first frame, instead of failing later with "Invalid RKNN model version".
"""

from __future__ import annotations

import re
import threading

import numpy as np

from rk_siglip_ros.manifest import Manifest, ShardSpec
from rk_siglip_ros.runtime.backends.base import (
    NPU_CORES,
    Backend,
    BackendError,
    Core,
    ShardRunner,
    declared_outputs,
)

OFF_BOARD_HINT = ("the rknnlite backend needs an RK3588 board with rknn-toolkit-lite2 installed "
                  "(`pip install rknn-toolkit-lite2==<the toolkit version in manifest.json>`: aarch64 wheels on "
                  "PyPI; plus librknnrt.so in /usr/lib); off the board use --backend onnxruntime (CPU) or sim "
                  "(timing)")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def import_rknnlite() -> type:
    """The RKNNLite class, or BackendError with what to install."""
    try:
        from rknnlite.api import RKNNLite
    except ImportError as error:
        raise BackendError(f"{OFF_BOARD_HINT} (import failed: {error})") from None
    return RKNNLite


def rknnlite_available() -> bool:
    try:
        import_rknnlite()
    except BackendError:
        return False
    return True


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text or "")
    return tuple(int(part) for part in match.groups()) if match else None  # type: ignore[return-value]


def runtime_version(sdk_version: str) -> tuple[int, int, int] | None:
    """librknnrt's version from RKNNLite.get_sdk_version()'s text (the number after "librknnrt version" / "DRV"
    when present, otherwise the first x.y.z in the text)."""
    for marker in ("librknnrt version", "API"):
        index = sdk_version.find(marker)
        if index >= 0:
            found = parse_version(sdk_version[index:])
            if found:
                return found
    return parse_version(sdk_version)


def check_runtime_version(sdk_version: str, toolkit: str, model: str) -> None:
    """Refuse a librknnrt older than the toolkit that built ``model``."""
    needed = parse_version(toolkit)
    have = runtime_version(sdk_version)
    if needed is None or have is None:
        return  # nothing comparable recorded; the load itself will complain if it must
    if have < needed:
        raise BackendError(f"{model} was built by rknn-toolkit2 {toolkit}, but this board's librknnrt is "
                           f"{'.'.join(map(str, have))}; update librknnrt.so (and rknn-toolkit-lite2) to >= {toolkit}, "
                           "or rebuild the shards with the toolkit version matching the board")


def input_data_format(shard: ShardSpec) -> str | None:
    """The ``data_format`` for RKNN(Lite).inference: "nchw" when the shard has a 4-D input, else None.

    The toolkit reads an ONNX graph's 4-D input dims as N, C, H, W and, unless told "nchw", expects the array in
    NHWC order and transposes it. "nchw" therefore means "exactly as exported", which is what the host feeds for
    either preprocess layout (the pixel input of an NHWC manifest is (1, H, W, 3) in the graph too; "nhwc" would
    demand (1, H, 3, W)). The argument only applies to 4-D inputs: the (1, T, C) inputs of later shards are taken
    as they are, and None there is the call the builder verifies on the simulator. A list with None entries is
    refused by the toolkit, so one string covers all inputs.
    """
    return "nchw" if any(len(spec.shape) == 4 for spec in shard.inputs) else None


class RknnLiteBackend(Backend):
    name = "rknnlite"
    file_kind = "rknn"

    def __init__(self) -> None:
        self._lite = import_rknnlite()
        self._core_masks: dict[Core, int] = {0: self._lite.NPU_CORE_0, 1: self._lite.NPU_CORE_1,
                                             2: self._lite.NPU_CORE_2, (0, 1): self._lite.NPU_CORE_0_1,
                                             NPU_CORES: self._lite.NPU_CORE_0_1_2}
        self._lock = threading.Lock()  # context creation is not documented as thread-safe
        self.sdk_version: str | None = None  # RKNNLite.get_sdk_version() of the first context (librknnrt, driver)

    def core_mask(self, core: Core) -> int:
        """RKNNLite's core_mask for one core or a group of cores; BackendError for what RK3588 cannot do."""
        key = tuple(sorted(core)) if isinstance(core, tuple) else core
        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        if key not in self._core_masks:
            raise BackendError(f"RK3588 has NPU cores 0, 1, 2 and multi-core contexts on 0-1 or 0-1-2; core {core} "
                               "is not one of them")
        return self._core_masks[key]

    def load(self, manifest: Manifest, shard: ShardSpec, core: Core) -> ShardRunner:
        mask = self.core_mask(core)
        path = manifest.path(shard, "rknn")
        with self._lock:
            context = self._lite(verbose=False)
            try:
                if context.load_rknn(str(path)) != 0:
                    raise BackendError(f"RKNNLite.load_rknn({path}) failed; is the file built for "
                                       f"{manifest.target}? rebuild the shard set for this board")
                if context.init_runtime(core_mask=mask) != 0:
                    raise BackendError(f"RKNNLite.init_runtime(core {core}) failed for {path}; check that "
                                       "librknnrt.so and the rknpu driver are installed and the NPU is free")
                sdk_version = str(context.get_sdk_version())
                self.sdk_version = self.sdk_version or sdk_version
                check_runtime_version(sdk_version, manifest.toolchain.get("rknn_toolkit2", ""), str(path))
            except BaseException:
                context.release()
                raise
        return _RknnRunner(shard, core, context)


class _RknnRunner(ShardRunner):
    def __init__(self, shard: ShardSpec, core: Core, context: object) -> None:
        super().__init__(shard, core)
        self._context = context

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise BackendError(f"shard {self.shard.name} on core {self.core} was released")
        arrays = [np.ascontiguousarray(inputs[spec.name], dtype=np.float32) for spec in self.shard.inputs]
        values = self._context.inference(inputs=arrays, data_format=input_data_format(self.shard))
        if values is None:
            raise BackendError(f"RKNNLite.inference failed for shard {self.shard.name} on core {self.core}")
        names = [spec.name for spec in self.shard.outputs]
        return declared_outputs(self.shard, dict(zip(names, values, strict=True)))

    def close(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            context.release()
