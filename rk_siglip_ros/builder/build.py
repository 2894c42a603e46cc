"""Orchestration: model -> scale fold -> partition -> per-shard modules -> ONNX (+ RKNN) -> verification -> manifest.

Everything is written into a temp folder next to ``out`` and moved into place only at the end, so a failed or
interrupted build never leaves a folder that looks like a shard set.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..manifest import PIXEL_INPUT, Manifest, ModelInfo, ShardSpec, TensorSpec, record_hashes, save_manifest
from .barrier import check_barrier, disabled_rules, uses_poison
from .export_onnx import export_onnx
from .models import ModelSourceError, VisionTower, hf_image_processor, load_vision_tower
from .scale_fold import check_scale, fold_host_scale
from .shard_modules import ShardModule
from .shard_plan import FINAL, PROFILES, Block, encoder_blocks, plan_shards
from .tiling import check_tile
from .verify import (
    ONNX_MIN_COS,
    RKNN_MIN_COS,
    ShardRunner,
    VerificationError,
    cosine,
    onnx_runner,
    run_in_host_units,
)

FORMATS = ("onnx", "rknn")
DTYPES = ("fp16", "int8")
TARGETS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562")
SEED_TILE = 32
INT8_MIN_COS = 0.98  # int8 is lossy by design; below this the calibration is broken, not just coarse
VERIFY_SEED = 0


class BuildInputError(ValueError):
    """Bad arguments or model source; the message is one line saying what to change."""


@dataclass
class BuildOptions:
    profile: str
    shards: int | None
    tile: int | None
    barrier: str
    scale: float
    target: str
    dtype: str
    calibration: Path | None
    formats: tuple[str, ...]
    verify: bool


@dataclass
class ShardPlan:
    """One shard before it is built: its blocks, its tensor interface, and its module."""

    spec: ShardSpec
    blocks: list[Block]
    module: ShardModule
    reference_module: ShardModule  # unfolded, untiled: produces the fp32 reference at this shard's boundary
    stats: dict[str, float | int | None] = field(default_factory=dict)


def build_shards(model: str, out: Path, profile: str = "pipeline3", shards: int | None = None, tile: int | None = None,
                 barrier: str | None = None, scale: float = 0.1, target: str = "rk3588", dtype: str = "fp16",
                 calibration: Path | None = None, formats: tuple[str, ...] = ("onnx", "rknn"), verify: bool = True,
                 force: bool = False, progress: bool = True) -> Manifest:
    """Build a verified shard set for ``model`` into ``out`` and return its manifest (see DESIGN.md, manifest v1).

    Raises BuildInputError / ModelSourceError for bad input (nothing written), VerificationError when a shard or the
    chain falls below the cosine thresholds, RknnError when rknn-toolkit2 refuses a shard.
    """
    out = Path(out)
    options = _check_options(profile, shards, tile, barrier, scale, target, dtype, calibration, formats, verify)
    _check_out(out, force)
    tower = load_vision_tower(model)  # ModelSourceError (a ValueError) for bad sources
    if options.tile is not None:
        try:
            check_tile(options.tile, tower.num_tokens)
        except ValueError as error:
            raise BuildInputError(str(error)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the shard set is meant to be shared (e.g. installed by colcon)
    try:
        manifest = _build_into(tower, model, staging, options, progress)
        _move_into_place(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest.root = out.resolve()
    return manifest


# ------------------------------------------------------------------------------------------------ input checks


def _check_options(profile: str, shards: int | None, tile: int | None, barrier: str | None, scale: float,
                   target: str, dtype: str, calibration: Path | None, formats: Iterable[str],
                   verify: bool) -> BuildOptions:
    formats = tuple(formats)
    try:
        if profile not in PROFILES:
            raise ValueError(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
        if shards is not None and shards < 1:
            raise ValueError(f"--shards {shards}: need at least 1 shard")
        if barrier is None:
            barrier = "poison" if profile == "seed" else "none"
        check_barrier(barrier)
        check_scale(scale)
        if target not in TARGETS:
            raise ValueError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r}: choose fp16 or int8")
        if not formats or any(kind not in FORMATS for kind in formats):
            raise ValueError(f"--formats {','.join(formats)!r}: choose from onnx,rknn (onnx is always written)")
        if "rknn" in formats and importlib.util.find_spec("rknn") is None:
            raise ValueError("--formats includes rknn but rknn-toolkit2 is not installed here; install it "
                             "(`pip install --no-deps rknn-toolkit2==2.5.0`, x86_64/aarch64, Python <= 3.12) or pass "
                             "--formats onnx")
        if dtype == "int8" and "rknn" in formats and (calibration is None or not Path(calibration).is_dir()):
            raise ValueError("--dtype int8 needs --calibration DIR (a folder of representative images)")
    except ValueError as error:
        raise BuildInputError(str(error)) from None
    if tile is None and profile == "seed":
        tile = SEED_TILE
    # onnx is always exported: RKNN compiles from it and the runtime's CPU backend runs it
    formats = ("onnx", *(kind for kind in formats if kind != "onnx"))
    return BuildOptions(profile, shards, tile or None, barrier, scale, target, dtype,
                        Path(calibration) if calibration else None, formats, verify)


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


# ------------------------------------------------------------------------------------------------------- build


def _build_into(tower: VisionTower, source: str, folder: Path, options: BuildOptions, progress: bool) -> Manifest:
    blocks = encoder_blocks(tower)
    try:
        groups = plan_shards(blocks, options.profile, options.shards)
    except ValueError as error:
        raise BuildInputError(str(error)) from None
    folded = fold_host_scale(tower, options.scale)
    plans = _plan(tower, folded, groups, options)
    manifest = _manifest(tower, source, plans, options)
    images = verification_images(tower)
    references = _references(tower, plans, images, progress)

    for plan in _bar(plans, "export onnx", progress):
        plan.spec.onnx = f"{plan.spec.name}.onnx"
        example = torch.from_numpy(references[0][plan.spec.inputs[0].name] * np.float32(plan.spec.inputs[0].scale))
        export_onnx(plan.module, example, folder / plan.spec.onnx, plan.spec.inputs[0].name,
                    [spec.name for spec in plan.spec.outputs])
        plan.stats["onnx_bytes"] = (folder / plan.spec.onnx).stat().st_size

    verification: dict[str, object] = {}
    thresholds = {"onnx": ONNX_MIN_COS}
    if options.verify:
        runner = onnx_runner(folder)
        verification["onnx"] = _verify_chain(plans, runner, references, images, "onnx", ONNX_MIN_COS, progress)
    if "rknn" in options.formats:
        dataset = _calibration_dataset(folded, plans, options, folder) if options.dtype == "int8" else {}
        minimum = thresholds["rknn_sim"] = RKNN_MIN_COS if options.dtype == "fp16" else INT8_MIN_COS
        verification["rknn_sim"] = _compile_rknn(plans, folder, options, references, images, dataset, minimum,
                                                 progress)
        for path in folder.glob(".calibration*"):
            shutil.rmtree(path, ignore_errors=True)
    manifest.verification = _verification_summary(plans, verification, thresholds, images)
    record_hashes(manifest, folder)
    save_manifest(manifest, folder)
    return manifest


def _bar(items: list[ShardPlan], stage: str, progress: bool) -> tqdm:
    return tqdm(items, desc=f"{stage:<14}", unit="shard", file=sys.stderr, disable=not progress, leave=True)


def _plan(tower: VisionTower, folded: VisionTower, groups: list[list[Block]], options: BuildOptions) -> list[ShardPlan]:
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
                         macs=sum(block.macs for block in group), blocks=[block.label for block in group])
        module = ShardModule(folded, group, options.tile, uses_poison(options.barrier)).eval()
        plans.append(ShardPlan(spec, group, module, ShardModule(tower, group).eval()))
    return plans


def _manifest(tower: VisionTower, source: str, plans: list[ShardPlan], options: BuildOptions) -> Manifest:
    model = ModelInfo(source=source, architecture=tower.architecture, image_size=tower.image_size,
                      patch_size=tower.patch_size, hidden_size=tower.hidden_size, num_tokens=tower.num_tokens,
                      embedding_dim=tower.hidden_size)
    return Manifest(model=model, preprocess=tower.preprocess, shards=[plan.spec for plan in plans],
                    outputs={"pooled": "pooled" if tower.head is not None else None, "tokens": "tokens"},
                    profile=options.profile, target=options.target, dtype=options.dtype, host_scale=options.scale,
                    toolchain=toolchain_versions("rknn" in options.formats),
                    build={"tile": options.tile, "barrier": options.barrier, "shards": len(plans)})


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


# ------------------------------------------------------------------------------------------------ verification


def verification_images(tower: VisionTower) -> list[np.ndarray]:
    """Fixed inputs: a real photo through the checkpoint's own HF image processor, and seeded uniform noise in the
    normalised range. [1,3,H,W] float32 each."""
    images = []
    try:
        from skimage.data import astronaut

        processed = hf_image_processor(tower)(images=astronaut(), return_tensors="np")["pixel_values"]
        images.append(np.asarray(processed, np.float32).reshape(1, 3, tower.image_size, tower.image_size))
    except ImportError:  # scikit-image is a dev dependency; noise alone still checks the arithmetic
        pass
    generator = np.random.default_rng(VERIFY_SEED)
    images.append(generator.uniform(-1.0, 1.0, (1, 3, tower.image_size, tower.image_size)).astype(np.float32))
    return images


@torch.no_grad()
def _references(tower: VisionTower, plans: list[ShardPlan], images: list[np.ndarray],
                progress: bool) -> list[dict[str, np.ndarray]]:
    """Per image, the fp32 truth of every tensor crossing a shard boundary (unscaled, untiled, no barrier); the final
    tokens and pooled come from the unmodified transformers forward itself."""
    references = []
    for image in tqdm(images, desc=f"{'fp32 reference':<14}", unit="image", file=sys.stderr, disable=not progress):
        tensors = {PIXEL_INPUT: image}
        value: torch.Tensor | tuple[torch.Tensor, ...] = torch.from_numpy(image)
        for plan in plans[:-1]:
            value = plan.reference_module(value)
            tensors[plan.spec.outputs[0].name] = value.numpy()
        pooled, tokens = tower.reference(torch.from_numpy(image))
        tensors["tokens"] = tokens.numpy()
        if tower.head is not None:
            tensors["pooled"] = pooled.numpy()
        references.append(tensors)
    return references


def _verify_chain(plans: list[ShardPlan], runner: ShardRunner, references: list[dict[str, np.ndarray]],
                  images: list[np.ndarray], kind: str, minimum: float, progress: bool) -> dict[str, float]:
    """Run every shard alone on the reference inputs and the whole chain on its own outputs; fail below minimum."""
    chains = [{PIXEL_INPUT: image} for image in images]
    for plan in _bar(plans, f"verify {kind}", progress):
        _verify_shard(plan, runner, references, chains, kind, minimum)
    return _final_cosines(plans, chains, references, kind, minimum)


def _verify_shard(plan: ShardPlan, runner: ShardRunner, references: list[dict[str, np.ndarray]],
          chains: list[dict[str, np.ndarray]], kind: str, minimum: float) -> None:
    """One shard on every image: alone on the exact reference input (its own error) and on the chain so far (the
    accumulated error, whose outputs feed the next shard). Records both worst cosines in plan.stats."""
    alone, chained = 1.0, 1.0
    for reference, chain in zip(references, chains, strict=True):
        for source, sink in ((reference, None), (chain, chain)):
            for name, value in run_in_host_units(plan.spec, runner, source).items():
                cos = cosine(value, reference[name])
                if sink is None:
                    alone = _worst(alone, cos)
                else:
                    sink[name] = value
                    chained = _worst(chained, cos)
    plan.stats[f"{kind}_cos"] = alone
    plan.stats[f"{kind}_chain_cos"] = chained
    if _below(alone, minimum):
        raise VerificationError(f"shard {plan.spec.name} ({_describe(plan)}): {kind} output vs fp32 reference cos "
                                f"{alone:.7f} < {minimum} (run alone on the exact reference input)")


def _final_cosines(plans: list[ShardPlan], chains: list[dict[str, np.ndarray]],
                   references: list[dict[str, np.ndarray]], kind: str, minimum: float) -> dict[str, float]:
    result = {}
    for role in ("tokens", "pooled"):
        if role in references[0]:
            result[role] = min(cosine(chain[role], ref[role]) for chain, ref in zip(chains, references, strict=True))
    worst = min(result.values(), key=lambda value: -1.0 if np.isnan(value) else value)
    if _below(worst, minimum):
        first_bad = next((plan for plan in plans if _below(plan.stats[f"{kind}_chain_cos"], minimum)), plans[-1])
        raise VerificationError(f"{kind} chain end to end vs the fp32 transformers model: cos {worst:.7f} < {minimum} "
                                f"(first shard below it: {first_bad.spec.name}, {_describe(first_bad)}, chain cos "
                                f"{first_bad.stats[f'{kind}_chain_cos']:.7f})")
    return result


def _worst(a: float, b: float) -> float:
    return float("nan") if np.isnan(a) or np.isnan(b) else min(a, b)


def _below(cos: float, minimum: float) -> bool:
    return not cos >= minimum  # NaN (overflow, 0/0) counts as a failure


def _describe(plan: ShardPlan) -> str:
    return "+".join(plan.spec.blocks)


# -------------------------------------------------------------------------------------------------------- rknn


def _compile_rknn(plans: list[ShardPlan], folder: Path, options: BuildOptions,
                  references: list[dict[str, np.ndarray]], images: list[np.ndarray], datasets: dict[str, Path],
                  minimum: float, progress: bool) -> dict[str, float] | None:
    """Compile each shard, verify it on the simulator (alone and chained), release it before the next one."""
    from .rknn_compile import compile_shard

    chains = [{PIXEL_INPUT: image} for image in images]
    for index, plan in enumerate(_bar(plans, "compile rknn", progress)):
        plan.spec.rknn = f"{plan.spec.name}.rknn"
        compiled = compile_shard(folder / plan.spec.onnx, folder / plan.spec.rknn, options.target, options.dtype,
                                 datasets.get(plan.spec.name), disabled_rules(options.barrier), index == 0)
        try:
            plan.stats["compile_s"] = compiled.compile_s
            plan.stats["rknn_bytes"] = (folder / plan.spec.rknn).stat().st_size
            if options.verify:
                run_on_simulator: ShardRunner = lambda _spec, feeds, shard=compiled: shard.run(feeds)  # noqa: E731
                _verify_shard(plan, run_on_simulator, references, chains, "rknn_sim", minimum)
        finally:
            compiled.release()
    return _final_cosines(plans, chains, references, "rknn_sim", minimum) if options.verify else None


@torch.no_grad()
def _calibration_dataset(folded: VisionTower, plans: list[ShardPlan], options: BuildOptions,
                         folder: Path) -> dict[str, Path]:
    """Per shard, a dataset.txt of .npy inputs (as the NPU sees them: scaled) from the calibration images."""
    from PIL import Image

    assert options.calibration is not None
    files = sorted(p for p in options.calibration.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise BuildInputError(f"--calibration {options.calibration}: no .jpg/.png/.bmp images in it")
    processor = hf_image_processor(folded)
    work = folder / ".calibration"
    work.mkdir()
    lists: dict[str, list[str]] = {plan.spec.name: [] for plan in plans}
    for number, file in enumerate(files):
        pixels = processor(images=Image.open(file).convert("RGB"), return_tensors="np")["pixel_values"]
        value: torch.Tensor | tuple[torch.Tensor, ...] = torch.from_numpy(np.asarray(pixels, np.float32))
        for plan in plans:
            path = work / f"{plan.spec.name}_{number}.npy"
            np.save(path, value.numpy())  # the folded chain's tensors are already in NPU units
            lists[plan.spec.name].append(str(path))
            value = plan.module(value)
            if isinstance(value, tuple):
                break
    datasets = {}
    for name, paths in lists.items():
        datasets[name] = work / f"{name}.txt"
        datasets[name].write_text("\n".join(paths) + "\n")
    return datasets


def _verification_summary(plans: list[ShardPlan], verification: dict[str, object], thresholds: dict[str, float],
                          images: list[np.ndarray]) -> dict[str, object]:
    def worst(kind: str) -> float | None:
        values = verification.get(kind)
        return min(values.values()) if isinstance(values, dict) and values else None

    per_shard = []
    for plan in plans:
        per_shard.append({"name": plan.spec.name, **plan.stats})
    return {
        "onnx_vs_fp32_cos": worst("onnx"),
        "rknn_sim_vs_fp32_cos": worst("rknn_sim"),
        "onnx_vs_fp32": verification.get("onnx"),
        "rknn_sim_vs_fp32": verification.get("rknn_sim"),
        "thresholds": thresholds,  # the minimums this build was actually held to (int8 has its own)
        "images": len(images),
        "per_shard": per_shard,
    }


__all__ = ["BuildInputError", "ModelSourceError", "VerificationError", "build_shards", "verification_images"]
