"""Orchestration: model -> scale fold -> shard plan -> per-shard modules -> ONNX (+ RKNN) -> verification -> manifest.

Each step lives in its own module (options, models, scale_fold, shard_plan, shard_modules, export_onnx,
rknn_compile, calibration, verify); this one runs them in order. Everything is written into a temp folder next to
``out`` and moved into place only at the end, so a failed or interrupted build never leaves a folder that looks like
a shard set.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rk_siglip_ros.builder.barrier import uses_poison
from rk_siglip_ros.builder.export_onnx import export_onnx
from rk_siglip_ros.builder.models import ModelSourceError, VisionTower, load_vision_tower, shape_only_tower
from rk_siglip_ros.builder.options import BuildInputError, BuildOptions
from rk_siglip_ros.builder.scale_fold import fold_host_scale
from rk_siglip_ros.builder.shard_modules import PlannedShard, ShardModule
from rk_siglip_ros.builder.shard_plan import ATTENTION, FINAL, Block, encoder_blocks, plan_shards
from rk_siglip_ros.builder.split_layers import DEFAULT_PARTS, SPLIT, plan_split
from rk_siglip_ros.builder.text_tower import TextTower, build_text_side, load_text_tower
from rk_siglip_ros.builder.tiling import check_tile
from rk_siglip_ros.builder.verify import (
    INT8_MIN_COS,
    ONNX_MIN_COS,
    RKNN_MIN_COS,
    VerificationError,
    fp32_references,
    onnx_runner,
    split_references,
    verification_images,
    verification_summary,
    verify_chain,
)
from rk_siglip_ros.manifest import (
    PIXEL_INPUT,
    Manifest,
    ModelInfo,
    ShardSpec,
    StageSpec,
    TensorSpec,
    manifest_to_dict,
    parse_manifest,
    record_hashes,
    save_manifest,
)


def build_shards(model: str, out: Path, *, force: bool = False, progress: bool = True, **options: Any) -> Manifest:
    """Build a verified shard set for ``model`` into ``out`` and return its manifest (manifest v2).

    ``options`` are the fields of :class:`BuildOptions` (profile, shards, tile, barrier, scale, target, dtype,
    calibration, formats, verify, text); an unknown one is a TypeError. ``text``: also export the checkpoint's text
    tower and tokenizer (manifest ``text`` section, see text_tower.py).

    Raises BuildInputError / ModelSourceError for bad input (nothing written), VerificationError when a shard or the
    chain falls below the cosine thresholds, RknnError when rknn-toolkit2 refuses a shard.
    """
    out = Path(out)
    checked = BuildOptions(**options).checked()
    _check_out(out, force)
    tower = load_vision_tower(model)  # ModelSourceError (a ValueError) for bad sources
    if checked.tile is not None:
        try:
            check_tile(checked.tile, tower.num_tokens)
        except ValueError as error:
            raise BuildInputError(str(error)) from None
    text_tower = load_text_tower(model, tower) if checked.text else None  # before anything is written
    try:
        manifest = _build_staged(tower, model, out, checked, progress, text_tower, force)
    finally:  # also when the output folder cannot be made: the text tower's temp files go
        if text_tower is not None:
            text_tower.close()
    manifest.root = out.resolve()
    return manifest


def _build_staged(tower: VisionTower, model: str, out: Path, options: BuildOptions, progress: bool,
                  text_tower: TextTower | None, force: bool) -> Manifest:
    """Build into a hidden folder beside ``out`` and move it into place only when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the shard set is meant to be shared (e.g. installed by colcon)
    try:
        manifest = _build_into(tower, model, staging, options, progress, text_tower)
        _move_into_place(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BuildInputError(f"--out {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BuildInputError(f"--out {out} exists and is not empty; pass --force to replace it, or choose another "
                              "folder")


def _move_into_place(staging: Path, out: Path, force: bool) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()) and not force:
            raise BuildInputError(f"--out {out} appeared during the build; pass --force to replace it")
        old = out.with_name(f".{out.name}.replaced-{staging.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_into(tower: VisionTower, source: str, folder: Path, options: BuildOptions, progress: bool,
                text_tower: TextTower | None = None) -> Manifest:
    folded, plans, stages = _plan_all(tower, options)
    manifest = _manifest(tower, source, plans, options, stages)
    images = verification_images(tower)
    if stages:
        references = split_references(tower, stages, images, progress)
    else:
        references = fp32_references(tower, plans, images, progress)

    for plan in tqdm(plans, desc=f"{'export onnx':<14}", unit="shard", file=sys.stderr, disable=not progress):
        plan.spec.onnx = f"{plan.spec.name}.onnx"
        example = torch.from_numpy(references[0][plan.spec.inputs[0].name] * np.float32(plan.spec.inputs[0].scale))
        export_onnx(plan.module, example, folder / plan.spec.onnx, plan.spec.inputs[0].name,
                    [spec.name for spec in plan.spec.outputs])
        plan.stats["onnx_bytes"] = (folder / plan.spec.onnx).stat().st_size

    verification: dict[str, object] = {}
    thresholds = {"onnx": ONNX_MIN_COS}
    if options.verify:
        runner = onnx_runner(folder)
        verification["onnx"] = verify_chain(plans, runner, references, images, "onnx", ONNX_MIN_COS, progress,
                                            stages)
    if "rknn" in options.formats:
        from rk_siglip_ros.builder.calibration import calibration_dataset
        from rk_siglip_ros.builder.rknn_compile import compile_and_verify

        int8 = options.dtype == "int8" and options.calibration is not None
        dataset = calibration_dataset(folded, plans, options.calibration, folder) if int8 else {}
        minimum = thresholds["rknn_sim"] = RKNN_MIN_COS if options.dtype == "fp16" else INT8_MIN_COS
        verification["rknn_sim"] = compile_and_verify(plans, folder, options, references, images, dataset, minimum,
                                                      progress, stages)
        for path in folder.glob(".calibration*"):
            shutil.rmtree(path, ignore_errors=True)
    manifest.verification = verification_summary(plans, verification, thresholds, images)
    if text_tower is not None:
        for _ in tqdm(range(1), desc=f"{'text tower':<14}", unit="tower", file=sys.stderr, disable=not progress):
            manifest.text = build_text_side(text_tower, folder, options.verify)
    record_hashes(manifest, folder)
    save_manifest(manifest, folder)
    return manifest


def _plan_all(tower: VisionTower, options: BuildOptions) -> tuple[VisionTower, list[PlannedShard], list[StageSpec]]:
    """The scale-folded tower, every shard (spec and module) and, for the split profile, the stages."""
    folded = fold_host_scale(tower, options.scale)
    try:
        if options.profile == SPLIT:
            plans, stages = plan_split(tower, folded, options.shards or DEFAULT_PARTS, options.scale, options.tile,
                                       uses_poison(options.barrier))
            return folded, plans, stages
        groups = plan_shards(encoder_blocks(tower), options.profile, options.shards)
    except ValueError as error:
        raise BuildInputError(str(error)) from None
    return folded, _plan(tower, folded, groups, options), []


def planned_manifest(model: str, **options: Any) -> Manifest:
    """The manifest ``build_shards`` would write for ``random:<preset>`` (shards, stages, MACs, tensor shapes), with
    no file built and no weights made: the tower lives on torch's meta device. What the timing simulation of a
    full-size checkpoint needs (the sim backend reads no files) in a second instead of a build's minutes. Its
    ``root`` is unset and its file names name nothing yet."""
    checked = BuildOptions(**{**options, "formats": ("onnx",), "verify": False}).checked()
    tower = shape_only_tower(model)
    if checked.tile is not None:
        try:
            check_tile(checked.tile, tower.num_tokens)
        except ValueError as error:
            raise BuildInputError(str(error)) from None
    _, plans, stages = _plan_all(tower, checked)
    for plan in plans:
        plan.spec.onnx = f"{plan.spec.name}.onnx"
    manifest = _manifest(tower, model, plans, checked, stages)
    manifest.toolchain = {}
    return parse_manifest(manifest_to_dict(manifest), source=f"planned {model}")  # validated like a saved one


def _plan(tower: VisionTower, folded: VisionTower, groups: list[list[Block]],
          options: BuildOptions) -> list[PlannedShard]:
    scale = options.scale
    width, tokens = tower.hidden_size, tower.num_tokens
    stream_shape = (1, tokens, width)
    pixel = TensorSpec(PIXEL_INPUT, (1, 3, tower.image_size, tower.image_size), "float32", 1.0)
    plans = []
    for index, group in enumerate(groups):
        # The NPU carries s*x: the host multiplies the residual stream by s going in and by 1/s coming out, so every
        # tensor the host holds is in true units; tokens and pooled (after the post LayerNorm) are scale free.
        inputs = [pixel] if index == 0 else [TensorSpec(f"hidden_{index - 1}", stream_shape, "float32", scale)]
        if group[-1].kind == FINAL:
            outputs = [TensorSpec("tokens", stream_shape, "float32", 1.0)]
            if tower.head is not None:
                outputs.append(TensorSpec("pooled", (1, width), "float32", 1.0))
        else:
            outputs = [TensorSpec(f"hidden_{index}", stream_shape, "float32", 1.0 / scale)]
        layers = sorted({block.layer for block in group if block.layer is not None})
        spec = ShardSpec(name=f"s{index}", inputs=inputs, outputs=outputs, layers=layers,
                         macs=sum(block.macs for block in group), blocks=[block.label for block in group],
                         attention_macs=sum(2 * tokens * tokens * width for block in group if block.kind == ATTENTION))
        module = ShardModule(folded, group, options.tile, uses_poison(options.barrier)).eval()
        plans.append(PlannedShard(spec, group, module, ShardModule(tower, group).eval()))
    return plans


def _manifest(tower: VisionTower, source: str, plans: list[PlannedShard], options: BuildOptions,
              stages: list[StageSpec]) -> Manifest:
    model = ModelInfo(source=source, architecture=tower.architecture, image_size=tower.image_size,
                      patch_size=tower.patch_size, hidden_size=tower.hidden_size, num_tokens=tower.num_tokens,
                      embedding_dim=tower.hidden_size)
    return Manifest(model=model, preprocess=tower.preprocess, shards=[plan.spec for plan in plans],
                    outputs={"pooled": "pooled" if tower.head is not None else None, "tokens": "tokens"},
                    profile=options.profile, target=options.target, dtype=options.dtype, host_scale=options.scale,
                    toolchain=toolchain_versions("rknn" in options.formats),
                    build={"tile": options.tile, "barrier": options.barrier, "shards": len(plans),
                           **({"parts": len(stages[0].parts)} if stages else {})},
                    stages=stages)


def toolchain_versions(with_rknn: bool) -> dict[str, str]:
    packages = {"torch": "torch", "transformers": "transformers", "onnx": "onnx", "onnxruntime": "onnxruntime"}
    if with_rknn:
        packages["rknn_toolkit2"] = "rknn-toolkit2"
    versions = {}
    for key, distribution in packages.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = "unknown"
    return versions


__all__ = ["BuildInputError", "BuildOptions", "ModelSourceError", "VerificationError", "build_shards",
           "planned_manifest", "verification_images"]
