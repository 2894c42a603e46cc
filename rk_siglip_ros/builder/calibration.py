"""int8 calibration data: per shard, the inputs the NPU sees (scaled) for a folder of representative images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rk_siglip_ros.builder.models import VisionTower, hf_image_processor
from rk_siglip_ros.builder.options import BuildInputError
from rk_siglip_ros.builder.shard_modules import PlannedShard

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@torch.no_grad()
def calibration_dataset(folded: VisionTower, plans: list[PlannedShard], images: Path,
                        folder: Path) -> dict[str, Path]:
    """Per shard, a dataset.txt of .npy inputs (as the NPU sees them: scaled) from the calibration images."""
    from PIL import Image

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BuildInputError(f"--calibration {images}: no .jpg/.png/.bmp images in it")
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
