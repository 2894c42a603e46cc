"""What a build may be asked for, checked in one place.

:class:`BuildOptions` holds every option of a build with its default; ``build_shards``'s keyword arguments and the
``build_shards`` command's flags are its fields, by the same names. :meth:`BuildOptions.checked` validates them all
and fills in the defaults that depend on the profile.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from rk_siglip_ros.builder.barrier import check_barrier
from rk_siglip_ros.builder.scale_fold import check_scale
from rk_siglip_ros.builder.shard_plan import PROFILES
from rk_siglip_ros.errors import UserError

FORMATS = ("onnx", "rknn")
DTYPES = ("fp16", "int8")
TARGETS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562")
SEED_TILE = 32


class BuildInputError(UserError, ValueError):
    """Bad arguments or model source; the message is one line saying what to change."""


@dataclass(frozen=True)
class BuildOptions:
    """How to cut, rewrite, compile and check the graph (see ``build_shards --help``)."""

    profile: str = "pipeline3"
    shards: int | None = None  # None: the profile's count
    tile: int | None = None  # None: 32 for seed, off otherwise; 0 = off
    barrier: str | None = None  # None: poison for seed, none otherwise
    scale: float = 0.1
    target: str = "rk3588"
    dtype: str = "fp16"
    calibration: Path | None = None
    formats: tuple[str, ...] = FORMATS
    verify: bool = True
    text: bool = False  # also the text tower and tokenizer (text_tower.py)

    def checked(self) -> BuildOptions:
        """These options validated, with the profile's defaults filled in; raises BuildInputError."""
        formats = tuple(self.formats)
        try:
            _check_choices(self, formats)
        except ValueError as error:
            raise BuildInputError(str(error)) from None
        seed = self.profile == "seed"
        barrier = self.barrier if self.barrier is not None else ("poison" if seed else "none")
        tile = SEED_TILE if self.tile is None and seed else self.tile
        # onnx is always exported: RKNN compiles from it and the runtime's CPU backend runs it
        formats = ("onnx", *(kind for kind in formats if kind != "onnx"))
        calibration = Path(self.calibration) if self.calibration else None
        return dataclasses.replace(self, barrier=barrier, tile=tile or None, formats=formats, calibration=calibration)


def _check_choices(options: BuildOptions, formats: tuple[str, ...]) -> None:
    if options.profile not in PROFILES:
        raise ValueError(f"--profile {options.profile!r}: choose one of {', '.join(PROFILES)}")
    if options.shards is not None and options.shards < 1:
        raise ValueError(f"--shards {options.shards}: need at least 1 shard")
    if options.barrier is not None:
        check_barrier(options.barrier)
    check_scale(options.scale)
    if options.target not in TARGETS:
        raise ValueError(f"--target {options.target!r}: choose one of {', '.join(TARGETS)}")
    if options.dtype not in DTYPES:
        raise ValueError(f"--dtype {options.dtype!r}: choose fp16 or int8")
    if not formats or any(kind not in FORMATS for kind in formats):
        raise ValueError(f"--formats {','.join(formats)!r}: choose from onnx,rknn (onnx is always written)")
    if "rknn" in formats and importlib.util.find_spec("rknn") is None:
        raise ValueError("--formats includes rknn but rknn-toolkit2 is not installed here; install it "
                         "(`pip install --no-deps rknn-toolkit2==2.5.0`, x86_64/aarch64, Python <= 3.12) or pass "
                         "--formats onnx")
    calibration = options.calibration
    if options.dtype == "int8" and "rknn" in formats and (calibration is None or not Path(calibration).is_dir()):
        raise ValueError("--dtype int8 needs --calibration DIR (a folder of representative images)")
    if options.dtype == "int8" and "rknn" in formats and options.profile == "split":
        # int8 calibration feeds each shard the chain's tensors; the split profile's parts take rotated inputs
        raise ValueError("--dtype int8 is not available with --profile split (int8 lost the embedding on a board: "
                         "cos 0.03-0.08); build split in fp16")
