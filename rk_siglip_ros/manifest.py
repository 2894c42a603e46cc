"""Manifest v2: the only contract between the offline shard builder and the runtime.

A shard set is a folder with ``manifest.json`` plus the ONNX / RKNN files it names. The builder writes it with
:func:`save_manifest`; every consumer reads it with :func:`load_manifest`, which refuses anything it cannot trust
(wrong format or version, a path leaving the folder, a missing or altered file, shapes that do not chain) with an
error that names the file, what was expected, and what to do. Pure Python + numpy-free on purpose: the builder and
the runtime both import it.

Version 2 adds ``stages`` (the host's execution plan when it is more than a chain of shards: parallel parts of one
stage, each fed a token rotation of the stage's input and producing a slice of rows, which the host all-gathers; see
:class:`StageSpec`) and a shard's ``attention_macs``. A v1 manifest has neither: its shards run as a chain, exactly
as before, and it still loads.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rk_siglip_ros.errors import UserError

FORMAT = "rk_siglip_shards"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1: no stages (a chain of shards), no attention_macs
MANIFEST_NAME = "manifest.json"
ARCHITECTURES = ("siglip", "smolvlm")
FILE_KINDS = ("onnx", "rknn")
PIXEL_INPUT = "pixel_values"
REBUILD_HINT = "rebuild the shard set with `build_shards --model <checkpoint> --out <dir> --force`"
# Host scales outside this range lose float32 precision (or underflow) before they reach the NPU: refused at load.
SCALE_RANGE = (1e-6, 1e6)
# How far a producer's output scale times a consumer's input scale may stray from 1 (the builder writes s and 1/s).
SCALE_PAIR_TOLERANCE = 1e-5


class ManifestError(UserError, ValueError):
    """A shard set that cannot be used as it is; the message says which file and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor crossing the host/NPU boundary. The host multiplies by ``scale`` when feeding (inputs) or
    after reading (outputs), so the NPU can carry a scaled residual stream."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float = 1.0


@dataclass
class ShardSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx: str | None = None
    rknn: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    macs: int = 0
    # What the shard computes, in order: "embedding", "attention<i>", "mlp<i>", "final" (post-norm, head). Lets a
    # consumer (the NPU timing simulation) cost a shard without opening it.
    blocks: list[str] = field(default_factory=list)
    # Of ``macs``, the token-token products of attention (QK^T and AV). None: not recorded (v1, or a builder that
    # did not count them); the timing model then derives them from ``blocks``, which is exact only for whole layers.
    attention_macs: int | None = None

    def file(self, kind: str) -> str | None:
        """The relative path of this shard's ``onnx`` or ``rknn`` file, or None when not built."""
        if kind not in FILE_KINDS:
            raise ValueError(f"unknown shard file kind {kind!r}; expected one of {FILE_KINDS}")
        return getattr(self, kind)


@dataclass(frozen=True)
class PartSpec:
    """One call of a stage. In a gathered stage the host feeds ``shard`` the stage's input rotated by ``rotate``
    tokens (token ``rotate`` first: attention is permutation-equivariant over its keys, so one graph can serve every
    slice) and copies the first ``stop - start`` rows of its one output into rows [start, stop) of the gathered tensor.
    In a chain stage (no gather) ``start``/``stop`` are None and the shard's outputs are published by their names."""

    shard: str
    start: int | None = None
    stop: int | None = None
    rotate: int = 0

    @property
    def rows(self) -> int:
        return 0 if self.start is None or self.stop is None else self.stop - self.start


@dataclass
class StageSpec:
    """Calls the host may run at once (one per NPU core), then, when ``gather`` is set, the all-gather: the parts'
    row slices concatenated into the tensor ``gather`` declares ([1, tokens, width]; its scale is the one the parts'
    outputs carry). Without ``gather`` the stage is one shard of a chain."""

    name: str
    parts: list[PartSpec]
    gather: TensorSpec | None = None


@dataclass
class ModelInfo:
    source: str
    architecture: str
    image_size: int
    patch_size: int
    hidden_size: int
    num_tokens: int
    embedding_dim: int


@dataclass
class PreprocessSpec:
    """What the checkpoint's Hugging Face image processor does, so the runtime can do the same without it."""

    size: tuple[int, int]  # (height, width)
    resample: str = "bicubic"
    rescale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color: str = "RGB"
    layout: str = "NCHW"


@dataclass(frozen=True)
class SpecialToken:
    """A text the tokenizer maps to one id without splitting it; lstrip/rstrip: it eats the whitespace beside it."""

    id: int
    lstrip: bool = False
    rstrip: bool = False


@dataclass
class TokenizerSpec:
    """How the runtime turns a text into token ids exactly as the checkpoint's Hugging Face tokenizer does.

    ``kind`` names the algorithm (``siglip-sentencepiece``: transformers' SiglipTokenizer: lowercase, punctuation
    removed, whitespace collapsed, SentencePiece pieces, ``</s>`` appended, right-padded to ``max_length``);
    ``model`` is the SentencePiece model exactly as the HF tokenizer loads it; ``files`` the checkpoint's own
    tokenizer files (loadable with ``AutoTokenizer.from_pretrained``)."""

    kind: str
    model: str
    max_length: int
    padding: str = "max_length"  # SigLIP was trained on text padded to max_length; its pooled token is the last
    lowercase: bool = True
    eos_id: int = 1
    pad_id: int = 1
    unk_token: str = "<unk>"
    special_tokens: dict[str, SpecialToken] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass
class TextSpec:
    """The optional text tower (runs on the CPU with ONNX Runtime): ``input_ids`` int64 [batch, max_length] ->
    ``text_embeds`` float32 [batch, embedding_dim], not normalised. The probability that a text fits an image is
    sigmoid(logit_scale * cos + logit_bias); ``logit_scale`` is the multiplier itself (exp of the checkpoint's log
    scale)."""

    onnx: str
    tokenizer: TokenizerSpec
    embedding_dim: int
    logit_scale: float
    logit_bias: float
    input: str = "input_ids"
    output: str = "text_embeds"
    sha256: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        """Every file the text side needs, relative to the shard folder (all sha256-checked)."""
        return list(dict.fromkeys([self.onnx, self.tokenizer.model, *self.tokenizer.files]))


@dataclass
class Manifest:
    model: ModelInfo
    preprocess: PreprocessSpec
    shards: list[ShardSpec]
    # Final tensors by role. "pooled": None means the host pools (mean of tokens), as for the SmolVLM tower.
    outputs: dict[str, str | None]
    profile: str = "whole"
    target: str = "rk3588"
    dtype: str = "fp16"
    host_scale: float = 1.0
    toolchain: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    # How the graph was rewritten: {"tile": T or None, "barrier": "none|poison|disable-rules|both", "shards": N}.
    build: dict[str, Any] = field(default_factory=dict)
    # The text tower, when the shard set was built with --text; None for a vision-only shard set.
    text: TextSpec | None = None
    # The host's execution plan when it is more than a chain (the split profile); empty: the shards run in order.
    stages: list[StageSpec] = field(default_factory=list)
    # Where the manifest was loaded from; not serialised. Shard paths resolve against it.
    root: Path | None = None
    # File kinds whose files verify_files (or, as "text", verify_text_files) has checked (exist, inside root, sha256
    # match) since loading; not serialised. Lets SiglipEncoder.open and TextEncoder.open take an already verified
    # manifest without hashing the files again.
    verified_kinds: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def pixel_input(self) -> TensorSpec:
        return self.shards[0].inputs[0]

    def tensor(self, name: str) -> TensorSpec:
        """The spec of the tensor ``name`` as produced: a gathered stage output, or a shard's output."""
        for stage in self.stages:
            if stage.gather is not None and stage.gather.name == name:
                return stage.gather
        for shard in self.shards:
            for spec in shard.outputs:
                if spec.name == name:
                    return spec
        raise KeyError(name)

    def shard(self, name: str) -> ShardSpec:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)

    def execution_stages(self) -> list[StageSpec]:
        """What the host runs, in order: the manifest's stages, or (no stages) each shard as a chain stage."""
        if self.stages:
            return self.stages
        return [StageSpec(shard.name, [PartSpec(shard.name)]) for shard in self.shards]

    def path(self, shard: ShardSpec, kind: str) -> Path:
        """Absolute path of a shard file; raises ManifestError when the shard set has no such file."""
        relative = shard.file(kind)
        if relative is None:
            raise ManifestError(f"shard {shard.name} has no {kind} file in this shard set; {REBUILD_HINT} "
                                f"--formats {kind}")
        if self.root is None:
            raise ManifestError("manifest has no root folder; load it with load_manifest(dir)")
        return self.root / relative

    def has_files(self, kind: str) -> bool:
        return all(shard.file(kind) is not None for shard in self.shards)


# ---------------------------------------------------------------------------------------------------- hashing


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(manifest: Manifest) -> str:
    """The shard set's content hash: sha256 of its manifest in canonical JSON (sorted keys, no spaces). The manifest
    records every shard file's sha256, so the hash names the exact shard set wherever it was copied to."""
    canonical = json.dumps(manifest_to_dict(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_hashes(manifest: Manifest, directory: Path) -> None:
    """Fill every shard's ``sha256`` from the files as they are now in ``directory`` (the builder's last step)."""
    for shard in manifest.shards:
        shard.sha256 = {
            relative: file_sha256(directory / relative)
            for relative in (shard.onnx, shard.rknn)
            if relative is not None
        }
    if manifest.text is not None:
        manifest.text.sha256 = {relative: file_sha256(directory / relative) for relative in manifest.text.files}


# ---------------------------------------------------------------------------------------------- serialisation


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    shards = []
    for shard in manifest.shards:
        entry = asdict(shard)
        entry["inputs"] = [_tensor_to_dict(t) for t in shard.inputs]
        entry["outputs"] = [_tensor_to_dict(t) for t in shard.outputs]
        shards.append(entry)
    preprocess = asdict(manifest.preprocess)
    preprocess["size"] = list(manifest.preprocess.size)
    preprocess["mean"] = list(manifest.preprocess.mean)
    preprocess["std"] = list(manifest.preprocess.std)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "model": asdict(manifest.model),
        "preprocess": preprocess,
        "profile": manifest.profile,
        "target": manifest.target,
        "dtype": manifest.dtype,
        "host_scale": manifest.host_scale,
        "toolchain": dict(manifest.toolchain),
        "shards": shards,
        "outputs": dict(manifest.outputs),
        "build": dict(manifest.build),
        "verification": manifest.verification,
    }
    if manifest.text is not None:
        data["text"] = asdict(manifest.text)
    if manifest.stages:
        data["stages"] = [_stage_to_dict(stage) for stage in manifest.stages]
    return data


def _stage_to_dict(stage: StageSpec) -> dict[str, Any]:
    parts = []
    for part in stage.parts:
        entry: dict[str, Any] = {"shard": part.shard}
        if part.start is not None:
            entry.update(start=part.start, stop=part.stop, rotate=part.rotate)
        parts.append(entry)
    data: dict[str, Any] = {"name": stage.name, "parts": parts}
    if stage.gather is not None:
        data["gather"] = _tensor_to_dict(stage.gather)
    return data


def _tensor_to_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "scale": spec.scale}


def save_manifest(manifest: Manifest, directory: Path) -> Path:
    """Validate and write ``directory/manifest.json``; returns its path."""
    data = manifest_to_dict(manifest)
    parse_manifest(data, source=str(directory / MANIFEST_NAME))  # never write what load_manifest would refuse
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Parse the JSON structure of a manifest and validate everything that does not need the files."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a JSON object at the top level")
    _check_format(data, source)
    try:
        manifest = Manifest(
            model=_parse_model(data["model"]),
            preprocess=_parse_preprocess(data["preprocess"]),
            shards=[_parse_shard(entry) for entry in data["shards"]],
            outputs={str(role): _optional_text(name, f"outputs.{role}")
                     for role, name in dict(data["outputs"]).items()},
            profile=str(data.get("profile", "whole")),
            target=str(data.get("target", "rk3588")),
            dtype=str(data.get("dtype", "fp16")),
            host_scale=float(data.get("host_scale", 1.0)),
            toolchain={str(k): str(v) for k, v in dict(data.get("toolchain", {})).items()},
            verification=dict(data.get("verification", {})),
            build=dict(data.get("build", {})),
            text=_parse_text(data["text"]) if data.get("text") is not None else None,
            stages=[_parse_stage(entry) for entry in data.get("stages") or []],
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise ManifestError(f"{source}: malformed manifest ({type(error).__name__}: {error}); {REBUILD_HINT}") from None
    _check_model(manifest, source)
    _check_preprocess(manifest, source)
    _check_paths(manifest, source)
    if manifest.stages:
        _check_stages(manifest, source)
    else:
        _check_chain(manifest, source)
    _check_scales(manifest, source)
    _check_outputs(manifest, source)
    _check_toolchain(manifest, source)
    _check_text(manifest, source)
    return manifest


def _check_format(data: dict[str, Any], source: str) -> None:
    if data.get("format") != FORMAT:
        raise ManifestError(f"{source}: not an rk_siglip_ros shard manifest (format={data.get('format')!r}, "
                            f"expected {FORMAT!r})")
    if data.get("version") not in READABLE_VERSIONS:
        raise ManifestError(f"{source}: manifest version {data.get('version')!r} is not supported by this "
                            f"rk_siglip_ros (reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                            f"{REBUILD_HINT} with this version, or update rk_siglip_ros")
    if data.get("version") == 1 and data.get("stages"):
        raise ManifestError(f"{source}: a version 1 manifest cannot have stages (they came with version 2); "
                            f"{REBUILD_HINT}")


def _parse_model(data: dict[str, Any]) -> ModelInfo:
    text = ("source", "architecture")
    return ModelInfo(**{key: str(value) if key in text else int(value) for key, value in dict(data).items()})


def _parse_preprocess(data: dict[str, Any]) -> PreprocessSpec:
    height, width = (int(v) for v in data["size"])
    return PreprocessSpec(
        size=(height, width),
        resample=str(data.get("resample", "bicubic")),
        rescale=float(data.get("rescale", 1.0 / 255.0)),
        mean=tuple(float(v) for v in data.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(float(v) for v in data.get("std", (0.5, 0.5, 0.5))),
        color=str(data.get("color", "RGB")),
        layout=str(data.get("layout", "NCHW")),
    )


def _parse_tensor(data: dict[str, Any]) -> TensorSpec:
    spec = TensorSpec(
        name=str(data["name"]),
        shape=tuple(int(v) for v in data["shape"]),
        dtype=str(data.get("dtype", "float32")),
        scale=float(data.get("scale", 1.0)),
    )
    if not spec.shape or min(spec.shape) <= 0:
        raise ValueError(f"tensor {spec.name!r} shape {list(spec.shape)} must list one or more positive sizes")
    return spec


def _optional_text(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{what} must be a string or null, got {value!r}")
    return value


def _parse_shard(data: dict[str, Any]) -> ShardSpec:
    return ShardSpec(
        name=str(data["name"]),
        inputs=[_parse_tensor(t) for t in data["inputs"]],
        outputs=[_parse_tensor(t) for t in data["outputs"]],
        onnx=_optional_text(data.get("onnx"), "onnx"),
        rknn=_optional_text(data.get("rknn"), "rknn"),
        sha256={str(k): str(v) for k, v in dict(data.get("sha256", {})).items()},
        layers=[int(v) for v in data.get("layers", [])],
        macs=int(data.get("macs", 0)),
        blocks=[str(label) for label in data.get("blocks", [])],
        attention_macs=None if data.get("attention_macs") is None else int(data["attention_macs"]),
    )


def _parse_stage(data: dict[str, Any]) -> StageSpec:
    parts = []
    for entry in data["parts"]:
        start, stop = entry.get("start"), entry.get("stop")
        parts.append(PartSpec(shard=str(entry["shard"]), start=None if start is None else int(start),
                              stop=None if stop is None else int(stop), rotate=int(entry.get("rotate", 0))))
    gather = data.get("gather")
    return StageSpec(name=str(data["name"]), parts=parts, gather=None if gather is None else _parse_tensor(gather))


def _parse_text(data: dict[str, Any]) -> TextSpec:
    tokenizer = dict(data["tokenizer"])
    return TextSpec(
        onnx=str(data["onnx"]),
        tokenizer=TokenizerSpec(
            kind=str(tokenizer["kind"]),
            model=str(tokenizer["model"]),
            max_length=int(tokenizer["max_length"]),
            padding=str(tokenizer.get("padding", "max_length")),
            lowercase=bool(tokenizer.get("lowercase", True)),
            eos_id=int(tokenizer.get("eos_id", 1)),
            pad_id=int(tokenizer.get("pad_id", 1)),
            unk_token=str(tokenizer.get("unk_token", "<unk>")),
            special_tokens={str(k): SpecialToken(int(v["id"]), bool(v.get("lstrip", False)),
                                                 bool(v.get("rstrip", False)))
                            for k, v in dict(tokenizer.get("special_tokens", {})).items()},
            files=[str(f) for f in tokenizer.get("files", [])],
        ),
        embedding_dim=int(data["embedding_dim"]),
        logit_scale=float(data["logit_scale"]),
        logit_bias=float(data["logit_bias"]),
        input=str(data.get("input", "input_ids")),
        output=str(data.get("output", "text_embeds")),
        sha256={str(k): str(v) for k, v in dict(data.get("sha256", {})).items()},
        verification=dict(data.get("verification", {})),
    )


# -------------------------------------------------------------------------------------------------- validation


def _check_model(manifest: Manifest, source: str) -> None:
    model = manifest.model
    if model.architecture not in ARCHITECTURES:
        raise ManifestError(f"{source}: unknown architecture {model.architecture!r}; expected one of {ARCHITECTURES}")
    if not manifest.shards:
        raise ManifestError(f"{source}: the manifest lists no shards; {REBUILD_HINT}")
    if len(manifest.preprocess.mean) != 3 or len(manifest.preprocess.std) != 3:
        raise ManifestError(f"{source}: preprocess mean/std must have 3 values (RGB)")
    for role in ("pooled", "tokens"):
        if role not in manifest.outputs:
            raise ManifestError(f"{source}: outputs must name a {role!r} tensor (null for host pooling)")

def _check_preprocess(manifest: Manifest, source: str) -> None:
    """Numbers that would make every pixel tensor NaN/inf (std 0 or NaN) or empty are refused here, not per frame."""
    spec = manifest.preprocess
    low, high = SCALE_RANGE
    if any(not (math.isfinite(v) and low <= v <= high) for v in spec.std):
        raise ManifestError(f"{source}: preprocess.std must be finite and positive (within [{low:g}, {high:g}]), got "
                            f"{list(spec.std)} (a 0 or NaN would turn every frame into NaN); {REBUILD_HINT}")
    if any(not (math.isfinite(v) and abs(v) <= high) for v in spec.mean) or not low <= spec.rescale <= high:
        raise ManifestError(f"{source}: preprocess.mean must be finite (|mean| <= {high:g}) and preprocess.rescale "
                            f"within [{low:g}, {high:g}], got mean {list(spec.mean)}, rescale {spec.rescale}; "
                            f"{REBUILD_HINT}")
    if min(spec.size) <= 0:
        raise ManifestError(f"{source}: preprocess.size must be positive, got {list(spec.size)}")


def _check_scales(manifest: Manifest, source: str) -> None:
    """The builder's invariant: every scale positive, finite and within :data:`SCALE_RANGE`, and wherever a shard
    consumes an earlier shard's output, output scale x input scale == 1 (the NPU carries the same scaled stream
    across the boundary). A sign flip or an underflowing scale would otherwise give a silently wrong embedding."""
    low, high = SCALE_RANGE
    scales = [("host_scale", manifest.host_scale)]
    scales += [(f"shard {s.name} {t.name!r}", t.scale) for s in manifest.shards for t in (*s.inputs, *s.outputs)]
    scales += [(f"stage {g.name} gather", g.gather.scale) for g in manifest.stages if g.gather is not None]
    for what, scale in scales:
        if not (math.isfinite(scale) and low <= scale <= high):
            raise ManifestError(f"{source}: {what} scale {scale} must be a finite positive number within "
                                f"[{low:g}, {high:g}]; {REBUILD_HINT}")
    produced = {t.name: (s.name, t.scale) for s in manifest.shards for t in s.outputs}
    produced.update({stage.gather.name: (f"stage {stage.name}'s gather", stage.gather.scale)
                     for stage in manifest.stages if stage.gather is not None})
    for shard in manifest.shards:
        for spec in shard.inputs:
            if spec.name == PIXEL_INPUT:
                continue
            producer, out_scale = produced[spec.name]  # _check_chain / _check_stages guarantee a producer
            if abs(out_scale * spec.scale - 1.0) > SCALE_PAIR_TOLERANCE:
                raise ManifestError(f"{source}: shard {producer} writes {spec.name!r} with scale {out_scale} and shard "
                                    f"{shard.name} reads it with scale {spec.scale}; their product must be 1 (the "
                                    f"builder writes s and 1/s); {REBUILD_HINT}")


def _check_paths(manifest: Manifest, source: str) -> None:
    names = set()
    for shard in manifest.shards:
        if shard.name in names:
            raise ManifestError(f"{source}: two shards are named {shard.name!r}")
        names.add(shard.name)
        for kind in FILE_KINDS:
            relative = shard.file(kind)
            if relative is not None and not _is_inside(relative):
                raise ManifestError(f"{source}: shard {shard.name} {kind} path {relative!r} leaves the shard folder; "
                                    "paths must be relative and stay inside the folder that holds manifest.json")
        if shard.onnx is None and shard.rknn is None:
            raise ManifestError(f"{source}: shard {shard.name} names neither an onnx nor an rknn file")


def _is_inside(relative: str) -> bool:
    path = PurePosixPath(relative.replace("\\", "/"))
    return (not path.is_absolute() and ".." not in path.parts and bool(path.parts) and ":" not in path.parts[0]
            and "\x00" not in relative)


def _check_pixel_input(manifest: Manifest, source: str) -> None:
    first = manifest.shards[0]
    if len(first.inputs) != 1 or first.inputs[0].name != PIXEL_INPUT:
        raise ManifestError(f"{source}: the first shard must take exactly one input named {PIXEL_INPUT!r}")
    height, width = manifest.preprocess.size
    expected_pixels = (1, 3, height, width) if manifest.preprocess.layout == "NCHW" else (1, height, width, 3)
    if tuple(first.inputs[0].shape) != expected_pixels:
        raise ManifestError(f"{source}: shard {first.name} input shape {list(first.inputs[0].shape)} does not match "
                            f"the preprocess size {list(expected_pixels)}")


def _check_chain(manifest: Manifest, source: str) -> None:
    """Every shard input must be the pixel input (first shard) or an earlier shard's output of the same shape."""
    available: dict[str, TensorSpec] = {}
    _check_pixel_input(manifest, source)
    for index, shard in enumerate(manifest.shards):
        for spec in shard.inputs if index else ():
            _check_input(spec, available, f"{source}: shard {shard.name}", "any earlier shard")
        for spec in shard.outputs:
            if spec.name in available or spec.name == PIXEL_INPUT:
                raise ManifestError(f"{source}: tensor {spec.name!r} is produced twice (shard {shard.name})")
            available[spec.name] = spec
    for role, name in manifest.outputs.items():
        if name is not None and name not in available:
            raise ManifestError(f"{source}: outputs.{role} names {name!r}, which no shard produces")


def _check_input(spec: TensorSpec, available: dict[str, TensorSpec], where: str, producer: str) -> None:
    """A shard input must be a tensor already produced (by ``producer``), of the shape the shard expects."""
    produced = available.get(spec.name)
    if produced is None:
        raise ManifestError(f"{where} input {spec.name!r} is not produced by {producer} (available: "
                            f"{sorted(available)})")
    if tuple(produced.shape) != tuple(spec.shape):
        raise ManifestError(f"{where}: shape mismatch: input {spec.name!r} expects {list(spec.shape)} but it is "
                            f"produced as {list(produced.shape)}")


def _check_stages(manifest: Manifest, source: str) -> None:
    """The stage plan runs: every shard is used, every part's inputs exist when its stage starts (with the shapes
    the shard expects), a gathered stage's parts cover its rows exactly once, and a rotation stays inside the tokens."""
    shards = {shard.name: shard for shard in manifest.shards}
    used = {part.shard for stage in manifest.stages for part in stage.parts}
    unknown = sorted(used - set(shards))
    if unknown:
        raise ManifestError(f"{source}: stages name shards {unknown} that the manifest does not list; {REBUILD_HINT}")
    unused = [name for name in shards if name not in used]
    if unused:
        raise ManifestError(f"{source}: shards {unused} are in no stage; {REBUILD_HINT}")
    _check_pixel_input(manifest, source)
    available: dict[str, TensorSpec] = {PIXEL_INPUT: manifest.pixel_input}
    for stage in manifest.stages:
        where = f"{source}: stage {stage.name}"
        if not stage.parts:
            raise ManifestError(f"{where} has no parts; {REBUILD_HINT}")
        for part in stage.parts:
            for spec in shards[part.shard].inputs:
                _check_input(spec, available, f"{where}: shard {part.shard}", "an earlier stage")
        produces = _check_gather(stage, shards, available, where) if stage.gather else _chain_step(stage, shards, where)
        for spec in produces:
            if spec.name in available:
                raise ManifestError(f"{where}: tensor {spec.name!r} is produced twice")
            available[spec.name] = spec
    for role, name in manifest.outputs.items():
        if name is not None and name not in available:
            raise ManifestError(f"{source}: outputs.{role} names {name!r}, which no stage produces")


def _chain_step(stage: StageSpec, shards: dict[str, ShardSpec], where: str) -> list[TensorSpec]:
    part = stage.parts[0]
    if len(stage.parts) != 1 or part.start is not None or part.stop is not None or part.rotate:
        raise ManifestError(f"{where}: a stage without a gather runs exactly one shard, unrotated, with no rows; "
                            f"{REBUILD_HINT}")
    return list(shards[part.shard].outputs)


def _check_gather(stage: StageSpec, shards: dict[str, ShardSpec], available: dict[str, TensorSpec],
                  where: str) -> list[TensorSpec]:
    gather = stage.gather
    assert gather is not None
    if len(gather.shape) != 3 or gather.shape[0] != 1:
        raise ManifestError(f"{where}: the gathered tensor {gather.name!r} must be [1, tokens, width], got "
                            f"{list(gather.shape)}")
    tokens, width = gather.shape[1], gather.shape[2]
    next_row = 0
    for part in stage.parts:
        shard = shards[part.shard]
        if part.start is None or part.stop is None or part.start != next_row or part.stop <= part.start:
            raise ManifestError(f"{where}: part rows must tile [0, {tokens}) in order without gaps or overlaps "
                                f"(shard {part.shard} has [{part.start}, {part.stop}) where row {next_row} is next); "
                                f"{REBUILD_HINT}")
        next_row = part.stop
        if len(shard.inputs) != 1 or len(shard.outputs) != 1:
            raise ManifestError(f"{where}: shard {part.shard} of a gathered stage must have one input and one output")
        out = shard.outputs[0]
        if len(out.shape) != 3 or out.shape[2] != width or out.shape[1] < part.rows:
            raise ManifestError(f"{where}: shard {part.shard} outputs {list(out.shape)}, which cannot supply rows "
                                f"[{part.start}, {part.stop}) of {list(gather.shape)}")
        if abs(out.scale - gather.scale) > SCALE_PAIR_TOLERANCE * max(1.0, abs(gather.scale)):
            raise ManifestError(f"{where}: shard {part.shard} output scale {out.scale} differs from the gather's "
                                f"{gather.scale}; {REBUILD_HINT}")
        fed = available[shard.inputs[0].name]
        if part.rotate and (len(fed.shape) != 3 or not 0 < part.rotate < fed.shape[1]):
            raise ManifestError(f"{where}: part of shard {part.shard} rotates its input {list(fed.shape)} by "
                                f"{part.rotate} tokens; a rotation needs a [1, tokens, width] input and 0 <= rotate < "
                                "tokens")
    if next_row != tokens:
        raise ManifestError(f"{where}: parts cover rows [0, {next_row}) of {tokens}; {REBUILD_HINT}")
    return [gather]


def _check_outputs(manifest: Manifest, source: str) -> None:
    """Host and shards exchange float32 (quantisation lives inside the .rknn), and the embedding the runtime returns
    (pooled, or the token mean) is ``embedding_dim`` wide."""
    for shard in manifest.shards:
        for spec in (*shard.inputs, *shard.outputs):
            if spec.dtype != "float32":
                raise ManifestError(f"{source}: shard {shard.name} tensor {spec.name!r} has dtype {spec.dtype!r}; "
                                    "shard boundaries must be float32 (quantisation happens inside the .rknn); "
                                    f"{REBUILD_HINT}")
    pooled, tokens = manifest.outputs.get("pooled"), manifest.outputs.get("tokens")
    source_name = pooled if pooled is not None else tokens
    if source_name is None:
        raise ManifestError(f"{source}: outputs name neither a pooled nor a tokens tensor; {REBUILD_HINT}")
    width = manifest.tensor(source_name).shape[-1]
    if width != manifest.model.embedding_dim:
        raise ManifestError(f"{source}: model.embedding_dim is {manifest.model.embedding_dim} but output "
                            f"{source_name!r} is {width} wide; the manifest is inconsistent, {REBUILD_HINT}")


def _check_toolchain(manifest: Manifest, source: str) -> None:
    if any(shard.rknn for shard in manifest.shards):
        if not manifest.toolchain.get("rknn_toolkit2"):
            raise ManifestError(f"{source}: the shard set has .rknn files but does not record the rknn_toolkit2 "
                                f"version that built them; {REBUILD_HINT}")


TOKENIZER_KINDS = ("siglip-sentencepiece",)
PADDINGS = ("max_length",)


def _check_text(manifest: Manifest, source: str) -> None:
    """The text section, when present: known tokenizer, paths inside the folder, a width the image side shares."""
    text = manifest.text
    if text is None:
        return
    if text.tokenizer.kind not in TOKENIZER_KINDS:
        raise ManifestError(f"{source}: text tokenizer kind {text.tokenizer.kind!r} is not supported by this "
                            f"rk_siglip_ros (knows {', '.join(TOKENIZER_KINDS)}); update rk_siglip_ros")
    if text.tokenizer.padding not in PADDINGS or text.tokenizer.max_length < 2:
        raise ManifestError(f"{source}: text tokenizer padding {text.tokenizer.padding!r} / max_length "
                            f"{text.tokenizer.max_length} is not usable; {REBUILD_HINT} --text")
    for relative in text.files:
        if not _is_inside(relative):
            raise ManifestError(f"{source}: text file path {relative!r} leaves the shard folder; paths must be "
                                "relative and stay inside the folder that holds manifest.json")
    if text.embedding_dim != manifest.model.embedding_dim:
        raise ManifestError(f"{source}: the text tower is {text.embedding_dim} wide but the image embeddings are "
                            f"{manifest.model.embedding_dim}; they cannot be compared; {REBUILD_HINT} --text")
    if not (math.isfinite(text.logit_scale) and math.isfinite(text.logit_bias)) or text.logit_scale <= 0.0:
        raise ManifestError(f"{source}: text logit_scale {text.logit_scale} / logit_bias {text.logit_bias} must be "
                            f"finite (scale > 0); {REBUILD_HINT} --text")


def verify_text_files(manifest: Manifest, source: str = "manifest") -> None:
    """Check that every text-side file exists inside the folder and matches its recorded sha256 (done when the text
    tower is opened, so a node without labels never hashes it)."""
    root = _root_to_check(manifest, "text", source)
    if manifest.text is None:
        raise ManifestError(f"{source}: this shard set has no text tower; {REBUILD_HINT} --text")
    for relative in manifest.text.files:
        _check_file(root, relative, manifest.text.sha256.get(relative), "text file", source, f"{REBUILD_HINT} --text")
    manifest.verified_kinds = manifest.verified_kinds | {"text"}


def _root_to_check(manifest: Manifest, kind: str, source: str) -> Path:
    if manifest.root is None:
        raise ManifestError(f"{source}: the manifest has no folder (root) to check its {kind} files in; load it with "
                            "load_manifest(folder)")
    return manifest.root


def _check_file(root: Path, relative: str, expected: str | None, what: str, source: str, hint: str) -> None:
    """``relative`` exists inside ``root`` (no symlink out of it) and its sha256 is ``expected``; else one line."""
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ManifestError(f"{source}: {what} {relative!r} resolves outside the shard folder (a symlink?); copy the "
                            "file into the folder")
    if not path.is_file():
        raise ManifestError(f"{source}: {what} {path} is missing; {hint}")
    if expected is None:
        raise ManifestError(f"{source}: no sha256 recorded for {relative!r} ({what}); {hint}")
    actual = file_sha256(path)
    if actual != expected:
        raise ManifestError(f"{source}: {path} has been modified or corrupted (sha256 {actual[:12]}..., manifest "
                            f"expects {expected[:12]}...); {hint}")


# ------------------------------------------------------------------------------------------------------ loading


def load_manifest(location: str | Path, verify: Iterable[str] = FILE_KINDS) -> Manifest:
    """Load and validate a shard set.

    ``location`` is the shard folder or its manifest.json. ``verify`` names the file kinds whose files must exist
    and match their recorded sha256 (only kinds the manifest actually has are checked; a runtime that loads only
    ONNX passes ``("onnx",)`` so it does not hash large .rknn files it never opens).
    """
    path = Path(location)
    manifest_path = path if path.suffix == ".json" else path / MANIFEST_NAME
    if not manifest_path.is_file():
        hint = f"build one with `build_shards --model <checkpoint or random:tiny> --out {path}`"
        raise ManifestError(f"no shard set at {path}: {manifest_path} does not exist; {hint}")
    try:
        data = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ManifestError(f"{manifest_path}: not UTF-8 text (byte {error.start}: {error.reason}); the file is "
                            f"corrupt or not a manifest; {REBUILD_HINT}") from None
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError is a ValueError
        raise ManifestError(f"{manifest_path}: not valid JSON ({error}); {REBUILD_HINT}") from None
    except OSError as error:
        raise ManifestError(f"{manifest_path}: cannot read ({error.strerror or error})") from None
    manifest = parse_manifest(data, str(manifest_path))
    manifest.root = manifest_path.parent.resolve()
    for kind in verify:
        verify_files(manifest, kind, str(manifest_path))
    return manifest


def verify_files(manifest: Manifest, kind: str, source: str = "manifest") -> None:
    """Check that every shard file of ``kind`` exists inside the folder and matches its recorded sha256."""
    root = _root_to_check(manifest, kind, source)
    for shard in manifest.shards:
        relative = shard.file(kind)
        if relative is not None:
            _check_file(root, relative, shard.sha256.get(relative), f"shard {shard.name} {kind} file", source,
                        REBUILD_HINT)
    manifest.verified_kinds = manifest.verified_kinds | {kind}
