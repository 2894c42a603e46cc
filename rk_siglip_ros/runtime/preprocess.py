"""Host-side image preparation, driven by the manifest: RGB uint8 image -> the first shard's pixel tensor.

It does what the checkpoint's Hugging Face image processor does (its PIL backend: resize the uint8 image
with PIL, then rescale and normalise in float), so the runtime needs neither transformers nor torch. PIL is used for
the resize on purpose: its bicubic filter widens its support when downscaling (antialiasing) and OpenCV's INTER_CUBIC
does not, so OpenCV would drift from the reference on camera-sized inputs.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from PIL import Image

from rk_siglip_ros.manifest import PreprocessSpec

RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def resample_filters(image_module: ModuleType) -> dict[str, int]:
    """Resample name -> PIL filter constant, for Pillow >= 9.0.

    ``Image.Resampling`` only exists from Pillow 9.1; Ubuntu 22.04's python3-pil (what rosdep gives a Humble robot)
    is 9.0.1, which has the same values as module constants (``Image.BICUBIC``). Those were deprecated in 9.1 and
    removed in 10, so take the enum when it is there and the constants otherwise.
    """
    source = getattr(image_module, "Resampling", image_module)
    return {name: int(getattr(source, name.upper())) for name in RESAMPLE_NAMES}


RESAMPLE_FILTERS = resample_filters(Image)


def check_image(image: object) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 array, or raise ValueError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an (H, W, 3) uint8 RGB numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image (shape {image.shape})")
    return image


class Preprocessor:
    """RGB uint8 image of any size -> the first shard's ``pixel_values`` tensor, host input scale included.

    Rescale, mean/std and the shard's input scale collapse into one multiply-add per channel:
    ``((x * rescale - mean) / std) * scale == x * (rescale * scale / std) + (-mean * scale / std)``.
    """

    def __init__(self, spec: PreprocessSpec, input_scale: float = 1.0) -> None:
        if spec.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"preprocess.resample {spec.resample!r} is not supported; expected one of "
                             f"{sorted(RESAMPLE_FILTERS)}")
        if spec.color not in ("RGB", "BGR"):
            raise ValueError(f"preprocess.color {spec.color!r} is not supported; expected RGB or BGR")
        if spec.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"preprocess.layout {spec.layout!r} is not supported; expected NCHW or NHWC")
        self.spec = spec
        self.size = tuple(spec.size)  # (height, width)
        self._filter = RESAMPLE_FILTERS[spec.resample]
        mean = np.asarray(spec.mean, dtype=np.float64)
        std = np.asarray(spec.std, dtype=np.float64)
        self._gain = (spec.rescale * input_scale / std).astype(np.float32)
        self._offset = (-mean * input_scale / std).astype(np.float32)
        if spec.color == "BGR":
            self._gain, self._offset = self._gain[::-1].copy(), self._offset[::-1].copy()

    def resize(self, image: np.ndarray) -> np.ndarray:
        """PIL resize of the uint8 image to the model size (skipped when it already has that size)."""
        height, width = self.size
        if image.shape[:2] == (height, width):
            return image
        resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), self._filter)
        return np.asarray(resized)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        pixels = self.resize(check_image(image))
        if self.spec.color == "BGR":
            pixels = pixels[..., ::-1]
        if self.spec.layout == "NCHW":
            planes = np.empty((1, 3, *self.size), dtype=np.float32)
            for channel in range(3):
                np.multiply(pixels[..., channel], self._gain[channel], out=planes[0, channel], casting="unsafe")
                planes[0, channel] += self._offset[channel]
            return planes
        return (pixels.astype(np.float32) * self._gain + self._offset)[None]
