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
    quiet_export(module, (example,), path, [input_name], output_names)


def quiet_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                 output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """``torch.onnx.export`` (TorchScript exporter, opset 17) without its tracer chatter; static shapes unless
    ``dynamic_axes`` names some (the text tower's batch)."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on static shapes
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True, dynamic_axes=dynamic_axes)
