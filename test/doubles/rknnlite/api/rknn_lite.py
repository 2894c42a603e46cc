"""A faithful test double of rknn-toolkit-lite2 2.5.0's ``RKNNLite`` (rknnlite/api/rknn_lite.py of the wheel).

Faithful (read from the 2.5.0 aarch64 wheel: rknn_lite.py is plain Python, its runtime module is compiled and was
read through its strings):
- the class constants (NPU_CORE_AUTO 0, NPU_CORE_0 1, _1 2, _2 4, _0_1 3, _0_1_2 7, NPU_CORE_ALL 0xffff), method
  names, signatures and defaults;
- return conventions: ``load_rknn`` / ``init_runtime`` return 0 or -1 and log an error line instead of raising;
  ``inference`` returns a list of arrays or None; ``get_sdk_version`` is None before ``init_runtime``;
  ``release`` is idempotent; ``init_runtime`` refuses core masks RK3588 does not have;
- ``data_format`` semantics: a 4-D graph input is read as N, C, H, W; "nchw" means the array is in exactly that
  order, None or "nhwc" mean the array is N, H, W, C and is transposed; inputs that are not 4-D are taken as they
  are whatever the format; a list must have one entry per input; other strings are refused;
- input checks: a list of numpy arrays of a supported dtype and the graph's element count;
- ``reuse_outputs=True`` returns views of buffers that the next call overwrites;
- ``get_sdk_version`` text laid out like the real one ("RKNN VERSION:", "  API: <librknnrt>", "  DRV: <driver>").

Not the board: the graph that runs is the .rknn's sibling .onnx (same folder, same stem) on ONNX Runtime's CPU
provider, one intra-op thread per context; ``init_runtime(target=None)`` behaves as on an aarch64 board (the real
wheel refuses it on x86). The librknnrt and driver versions reported are :data:`BOARD`'s (tests may change them).
:data:`LIVE` lists the contexts between ``init_runtime`` and ``release`` so tests can see their core masks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

# What get_sdk_version reports; a test sets e.g. BOARD["librknnrt"] = "1.6.0 (...)" to act as an old board.
BOARD = {"librknnrt": "2.5.0 (test-double@2025-01-01T00:00:00)", "driver": "0.9.8"}
LIVE: list[RKNNLite] = []  # contexts with a runtime (init_runtime done, release not yet)
RKNN_MAGIC = b"RKNN"
_SUPPORTED_TYPES = {"int8", "uint8", "int16", "float16", "float32"}
_FORMATS = ("nchw", "nhwc")


def _log_error(message: str) -> None:
    """The real wheel prints 'E <message>' through its logger and carries on."""
    print(f"E {message}", file=sys.stderr)


class RKNNLite:

    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xffff

    def __init__(self, verbose=False, verbose_file=None):
        self.verbose = verbose
        self.rknn_data = None
        self.rknn_path = None
        self.core_mask = None  # the mask init_runtime accepted (double only: the real object keeps it in C)
        self.inference_calls = 0
        self._session = None
        self._reused = None

    def load_rknn(self, path, key_path=None):
        if path is None or not os.path.exists(path):
            _log_error(f"Invalid RKNN model path: {'None' if not path else path}")
            return -1
        with open(path, "rb") as handle:
            self.rknn_data = handle.read()
        self.rknn_path = str(path)
        if key_path is not None and not os.path.exists(key_path):
            _log_error(f"Invalid key envelope path: {key_path}")
            return -1
        return 0

    def list_devices(self):
        return [], []

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        if target is not None and str(target).upper() != "RK3588":
            _log_error(f"Unsupported target: {target}! (this double is an RK3588)")
            return -1
        if self.rknn_data is None:
            _log_error("Model is not loaded yet, this interface should be called after load_rknn!")
            return -1
        if self._session is not None:
            self.release()
        if not self.rknn_data.startswith(RKNN_MAGIC):
            _log_error("Catch exception when init runtime! (RKNN init failed. error code: RKNN_ERR_MODEL_INVALID)")
            return -1
        valid = (self.NPU_CORE_AUTO, self.NPU_CORE_0, self.NPU_CORE_1, self.NPU_CORE_2, self.NPU_CORE_0_1,
                 self.NPU_CORE_0_1_2, self.NPU_CORE_ALL)
        if core_mask not in valid:
            _log_error(f"The core mode {core_mask} is not supported currently.")
            return -1
        onnx_path = Path(self.rknn_path).with_suffix(".onnx")
        if not onnx_path.is_file():
            _log_error(f"test double: no sibling ONNX graph {onnx_path} to run for {self.rknn_path}")
            return -1
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.core_mask = core_mask
        LIVE.append(self)
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False,
                  reuse_outputs=False):
        if self._session is None:
            _log_error("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        feed = self._feed(inputs, data_type, data_format)
        if feed is None:
            _log_error("Catch exception when setting inputs.")
            return None
        outputs = [np.asarray(value, dtype=np.float32) for value in self._session.run(None, feed)]
        self.inference_calls += 1
        if reuse_outputs:
            if self._reused is None or [b.shape for b in self._reused] != [o.shape for o in outputs]:
                self._reused = [np.empty_like(o) for o in outputs]
            for buffer, value in zip(self._reused, outputs, strict=True):
                buffer[...] = value
            outputs = list(self._reused)
        if get_frame_id:
            outputs.append(self.inference_calls)
        return outputs

    def get_sdk_version(self):
        if self._session is None:
            _log_error("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        rule = "=" * 46
        return f"{rule}\nRKNN VERSION:\n  API: {BOARD['librknnrt']}\n  DRV: {BOARD['driver']}\n{rule}"

    def list_support_target_platform(self, rknn_model=None):
        if rknn_model is not None and not os.path.exists(rknn_model):
            _log_error(f"The model {rknn_model} does not exist.")
            return None
        return {"RK3588": ["RK3588"]}

    def release(self):
        if self._session is not None:
            self._session = None
            self._reused = None
            if self in LIVE:
                LIVE.remove(self)

    # ------------------------------------------------------------------------------------------ double only

    def _feed(self, inputs, data_type, data_format):
        """The ONNX feed for ``inputs`` as librknnrt would read them, or None (after an error line) when it refuses."""
        graph_inputs = self._session.get_inputs()
        if not isinstance(inputs, list) or len(inputs) != len(graph_inputs):
            _log_error("Inputs should be placed in a list, like [img1, img2], both the img1 and img2 are ndarray.")
            return None
        formats = data_format if isinstance(data_format, list) else [data_format] * len(inputs)
        if len(formats) != len(inputs):
            _log_error("The lengths of data_format and inputs are not equal.")
            return None
        feed = {}
        for index, (array, spec, fmt) in enumerate(zip(inputs, graph_inputs, formats, strict=True)):
            if not isinstance(array, np.ndarray):
                _log_error(f"Type of inputs[{index}] is not np.ndarray!")
                return None
            if str(array.dtype) not in _SUPPORTED_TYPES or (data_type is not None and data_type != str(array.dtype)):
                _log_error(f"Unsupport inputs[{index}].dtype: {array.dtype}")
                return None
            if fmt is not None and fmt not in _FORMATS:
                _log_error(f"Unsupport data format: {fmt}")
                return None
            shape = [int(d) for d in spec.shape]
            if array.size != int(np.prod(shape)):
                _log_error(f"Size of inputs[{index}] is invalid!")
                return None
            if len(shape) == 4 and fmt != "nchw":
                n, c, h, w = shape
                if array.shape != (n, h, w, c):
                    _log_error(f"The input[{index}] need 4dims input in NHWC ({n}, {h}, {w}, {c}), but "
                               f"{array.shape} was fed")
                    return None
                array = array.transpose(0, 3, 1, 2)
            feed[spec.name] = np.ascontiguousarray(array.reshape(shape), dtype=np.float32)
        return feed
