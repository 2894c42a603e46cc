"""ONNX export of one shard module with static shapes (the TorchScript exporter, opset 17).

torch 2.13's default exporter is the dynamo one, which needs onnxscript; the TorchScript exporter needs nothing
extra and its graphs compile with rknn-toolkit2 2.5.0.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                output_names: list[str]) -> None:
    """Write ``module(example)`` to ``path`` as a static-shape ONNX graph with the given tensor names."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on static shapes
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
