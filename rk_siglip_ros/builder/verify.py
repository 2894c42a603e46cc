"""Numerical verification of a shard chain against the unmodified fp32 model.

Fixed inputs (a real photo through the checkpoint's own image processor, and seeded noise) go through the unmodified
transformers model for the fp32 truth at every shard boundary; each shard is then run alone on the exact reference
input (its own error) and chained on the previous shards' outputs (the accumulated error).

The host contract is the manifest's: multiply an input by its ``scale`` before feeding it, an output by its
``scale`` after reading it. ``run_chain`` follows exactly that, for any per-shard runner (ONNX Runtime, the RKNN
simulator).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rk_siglip_ros.builder.models import VisionTower, hf_image_processor
from rk_siglip_ros.builder.shard_modules import PlannedShard, ShardModule
from rk_siglip_ros.builder.shard_plan import ATTENTION, EMBEDDING, MLP, Block, encoder_blocks
from rk_siglip_ros.errors import RunFailedError
from rk_siglip_ros.manifest import PIXEL_INPUT, Manifest, PartSpec, ShardSpec, StageSpec
from rk_siglip_ros.runtime.stages import rotate_tokens

# The project's acceptance thresholds: fp32 ONNX chain vs transformers, fp16 RKNN simulator chain vs transformers.
ONNX_MIN_COS = 0.99999
RKNN_MIN_COS = 0.999
INT8_MIN_COS = 0.98  # int8 is lossy by design; below this the calibration is broken, not just coarse
VERIFY_SEED = 0

RunShard = Callable[[ShardSpec, list[np.ndarray]], list[np.ndarray]]


class VerificationError(RunFailedError, RuntimeError):
    """A shard or the chain is numerically off; the message names the shard and the cosine."""


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denominator = np.linalg.norm(a64) * np.linalg.norm(b64)
    if denominator == 0.0:
        return 1.0 if np.array_equal(a64, b64) else 0.0
    return float(np.dot(a64, b64) / denominator)


def run_in_host_units(shard: ShardSpec, run_shard: RunShard,
                      tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One shard as the host runs it: each input (taken from ``tensors`` by name) times its scale going in, each
    output times its scale coming out, so what it returns is in true units."""
    feeds = [(tensors[spec.name] * np.float32(spec.scale)).astype(np.float32) for spec in shard.inputs]
    outputs = run_shard(shard, feeds)
    return {spec.name: np.asarray(value, np.float32).reshape(spec.shape) * np.float32(spec.scale)
            for spec, value in zip(shard.outputs, outputs, strict=True)}


def run_part(shard: ShardSpec, part: PartSpec, run_shard: RunShard,
             tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """One part of a gathered stage as the host runs it: its input rotated, its rows (true units) returned."""
    name = shard.inputs[0].name
    outputs = run_in_host_units(shard, run_shard, {name: rotate_tokens(tensors[name], part.rotate)})
    return outputs[shard.outputs[0].name][:, :part.rows]


def run_chain(manifest: Manifest, run_shard: RunShard, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """All tensors the shard set produces for one image, stage by stage (a chain of shards, or gathered stages of
    parallel parts), in host units (output scales applied)."""
    tensors: dict[str, np.ndarray] = {"pixel_values": pixel_values.astype(np.float32)}
    for stage in manifest.execution_stages():
        if stage.gather is None:
            tensors.update(run_in_host_units(manifest.shard(stage.parts[0].shard), run_shard, tensors))
            continue
        gathered = [run_part(manifest.shard(part.shard), part, run_shard, tensors) for part in stage.parts]
        tensors[stage.gather.name] = np.concatenate(gathered, axis=1)
    return tensors


def onnx_runner(root: Path) -> RunShard:
    """Run shards with ONNX Runtime (CPU, fp32), sessions opened once, one at a time (so each gets every CPU)."""
    from rk_siglip_ros.runtime.backends.onnxruntime import create_session  # imports only onnxruntime and numpy

    threads = os.cpu_count() or 1
    sessions: dict[str, Any] = {}

    def run(shard: ShardSpec, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if shard.name not in sessions:
            sessions[shard.name] = create_session(root / shard.onnx, threads)
        session = sessions[shard.name]
        return session.run([spec.name for spec in shard.outputs],
                           {spec.name: value for spec, value in zip(shard.inputs, feeds, strict=True)})

    return run


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
def fp32_references(tower: VisionTower, plans: list[PlannedShard], images: list[np.ndarray],
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
        broken = [name for name, array in tensors.items() if not np.isfinite(array).all()]
        if broken:
            raise VerificationError(f"the checkpoint's own fp32 forward gives values that are not finite (NaN/inf) "
                                    f"in {', '.join(broken)} on verification image {len(references)}: its weights "
                                    "are broken; check the checkpoint (or download it again)")
        references.append(tensors)
    return references


@torch.no_grad()
def split_references(tower: VisionTower, stages: list[StageSpec], images: list[np.ndarray],
                     progress: bool) -> list[dict[str, np.ndarray]]:
    """Per image, the fp32 truth of every gathered stage output (the residual stream after each whole layer, from the
    unmodified tower's own modules) and of tokens / pooled (the unmodified transformers forward)."""
    blocks = encoder_blocks(tower)
    layer_blocks: dict[int, list[Block]] = {}
    for block in blocks:
        if block.kind in (ATTENTION, MLP):
            layer_blocks.setdefault(int(block.layer), []).append(block)
    embedding = [block for block in blocks if block.kind == EMBEDDING]
    references = []
    for image in tqdm(images, desc=f"{'fp32 reference':<14}", unit="image", file=sys.stderr, disable=not progress):
        tensors = {PIXEL_INPUT: image}
        value = torch.from_numpy(image)
        for layer, stage in enumerate(stage for stage in stages if stage.gather is not None):
            value = ShardModule(tower, (embedding if layer == 0 else []) + layer_blocks[layer]).eval()(value)
            tensors[stage.gather.name] = value.numpy()
        pooled, tokens = tower.reference(torch.from_numpy(image))
        tensors["tokens"] = tokens.numpy()
        if tower.head is not None:
            tensors["pooled"] = pooled.numpy()
        references.append(tensors)
    return references


def verify_chain(plans: list[PlannedShard], runner: RunShard, references: list[dict[str, np.ndarray]],
                  images: list[np.ndarray], kind: str, minimum: float, progress: bool,
                  stages: list[StageSpec] | None = None) -> dict[str, float]:
    """Run every shard alone on the reference inputs and the whole chain on its own outputs; fail below minimum.
    With ``stages`` (the split profile) each shard runs as the parts that use it, and the chain gathers their rows."""
    chains = [{PIXEL_INPUT: image} for image in images]
    for plan in tqdm(plans, desc=f"{'verify ' + kind:<14}", unit="shard", file=sys.stderr, disable=not progress):
        verify_shard(plan, runner, references, chains, kind, minimum, stages)
    return final_cosines(plans, chains, references, kind, minimum)


def verify_shard(plan: PlannedShard, runner: RunShard, references: list[dict[str, np.ndarray]],
                 chains: list[dict[str, np.ndarray]], kind: str, minimum: float,
                 stages: list[StageSpec] | None = None) -> None:
    """One shard on every image: alone on the exact reference input (its own error) and on the chain so far (the
    accumulated error, whose outputs feed the next shard). Records both worst cosines in plan.stats."""
    uses = [(stage, part) for stage in stages or () if stage.gather is not None
            for part in stage.parts if part.shard == plan.spec.name]
    if uses:
        _verify_parts(plan, uses, runner, references, chains, kind, minimum)
        return
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


def _verify_parts(plan: PlannedShard, uses: list[tuple[StageSpec, PartSpec]], runner: RunShard,
                  references: list[dict[str, np.ndarray]], chains: list[dict[str, np.ndarray]], kind: str,
                  minimum: float) -> None:
    """A gathered stage's shard, run as each part that uses it: its rows alone (on the exact reference input) and
    chained (on the chain's gathered input, written into the chain's gathered output) against the reference rows."""
    alone, chained = 1.0, 1.0
    for reference, chain in zip(references, chains, strict=True):
        for stage, part in uses:
            assert stage.gather is not None
            truth = reference[stage.gather.name][:, part.start:part.stop]
            alone = _worst(alone, cosine(run_part(plan.spec, part, runner, reference), truth))
            rows = run_part(plan.spec, part, runner, chain)
            target = chain.setdefault(stage.gather.name, np.zeros(stage.gather.shape, np.float32))
            target[:, part.start:part.stop] = rows
            chained = _worst(chained, cosine(rows, truth))
    plan.stats[f"{kind}_cos"] = alone
    plan.stats[f"{kind}_chain_cos"] = chained
    if _below(alone, minimum):
        raise VerificationError(f"shard {plan.spec.name} ({_describe(plan)}): {kind} rows vs fp32 reference cos "
                                f"{alone:.7f} < {minimum} (run alone on the exact reference input)")


def final_cosines(plans: list[PlannedShard], chains: list[dict[str, np.ndarray]],
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


def _describe(plan: PlannedShard) -> str:
    return "+".join(plan.spec.blocks)


def verification_summary(plans: list[PlannedShard], verification: dict[str, object], thresholds: dict[str, float],
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
