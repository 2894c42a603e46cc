"""Model sources for the offline builder: a local checkpoint, a hub id, or a seeded ``random:<preset>``.

Everything downstream sees one :class:`VisionTower`: the transformers module plus the parts the builder cuts
(embeddings, encoder layers, post-norm, optional attention-pooling head) and the preprocessing the checkpoint's
image processor applies. Offline only: imports torch and transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rk_siglip_ros.errors import UserError
from rk_siglip_ros.manifest import PreprocessSpec

RANDOM_PREFIX = "random:"
RANDOM_SEED = 0

# Real architectures, random weights. "tiny" presets keep the exact module structure at toy width so tests run in
# seconds; the 512 presets are the shapes we ship for (SigLIP-B/16@512 is also SmolVLM-256M/500M's tower).
_SIGLIP_B16_512 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=512, patch_size=16)
_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16)
_L16 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=16)
_SO400M14 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=14)
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             image_size=64, patch_size=8)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("siglip", _TINY),
    "tiny-smolvlm": ("smolvlm", _TINY),
    # 12 layers at toy width: the seed profile's 26-shard cut, testable in seconds.
    "tiny-12": ("siglip", {**_TINY, "num_hidden_layers": 12}),
    "siglip-base-patch16-512": ("siglip", _SIGLIP_B16_512),
    "smolvlm-vision-512": ("smolvlm", _SIGLIP_B16_512),
    # The shapes of the published SigLIP checkpoints a robot would pick from (the model table in benchmarks/): same
    # graph, random weights. So400m/14 at 384 px has 27 x 27 patches (the patch conv drops the last 6 pixels).
    "siglip-base-patch16-224": ("siglip", {**_B16, "image_size": 224}),
    "siglip-base-patch16-256": ("siglip", {**_B16, "image_size": 256}),
    "siglip-base-patch16-384": ("siglip", {**_B16, "image_size": 384}),
    "siglip-large-patch16-256": ("siglip", {**_L16, "image_size": 256}),
    "siglip-large-patch16-384": ("siglip", {**_L16, "image_size": 384}),
    "siglip-so400m-patch14-224": ("siglip", {**_SO400M14, "image_size": 224}),
    "siglip-so400m-patch14-384": ("siglip", {**_SO400M14, "image_size": 384}),
}

# PIL resample codes as stored in Hugging Face preprocessor_config.json.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
# SigLIP 2 embeds variable-size patch sequences with a linear layer (NaFlex): a different graph from the one cut here.
SIGLIP2_MODEL_TYPES = ("siglip2", "siglip2_vision_model")
SMOLVLM_MODEL_TYPES = ("smolvlm", "smolvlm_vision", "idefics3", "idefics3_vision")


class ModelSourceError(UserError, ValueError):
    """The --model argument cannot be turned into a vision tower; the message says what to do."""


@dataclass
class VisionTower:
    """A loaded vision encoder, in eval mode, float32, with the pieces the builder partitions."""

    architecture: str  # "siglip" | "smolvlm"
    source: str
    module: nn.Module  # the transformers model; calling reference() uses it unmodified
    config: Any  # the vision config
    preprocess: PreprocessSpec
    checkpoint: Path | None = None  # the local folder the weights came from (a hub id's download); None: random

    @property
    def transformer(self) -> nn.Module:
        """The module holding embeddings / encoder / post_layernorm (/ head); transformers 4.x wrapped SigLIP's in
        ``vision_model``, 5.x does not."""
        return getattr(self.module, "vision_model", self.module)

    @property
    def embeddings(self) -> nn.Module:
        return self.transformer.embeddings

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.encoder.layers

    @property
    def post_layernorm(self) -> nn.LayerNorm:
        return self.transformer.post_layernorm

    @property
    def head(self) -> nn.Module | None:
        """SigLIP's attention-pooling head, or None (SmolVLM: pooled = mean of tokens)."""
        transformer = self.transformer
        return transformer.head if getattr(transformer, "use_head", False) else None  # smolvlm: no such attr

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @torch.no_grad()
    def reference(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled, tokens) from the unmodified transformers forward — the ground truth every shard set must match.

        tokens are the post-LayerNorm last hidden state; pooled is the head output (SigLIP) or the token mean.
        """
        output = self.module(pixel_values=pixel_values)
        tokens = output.last_hidden_state
        pooled = output.pooler_output if self.head is not None else tokens.mean(dim=1)
        return pooled, tokens


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers logs errors only and draws no bars, meanwhile: loading one tower of a full SigLIP checkpoint
    lists the other tower's weights as unexpected, and its weight-loading bar would interleave with the builder's
    own progress (and break a failure's one line under --quiet)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_vision_tower(source: str) -> VisionTower:
    """Load ``random:<preset>``, a local checkpoint directory, or a Hugging Face hub id."""
    if source.startswith(RANDOM_PREFIX):
        return _random_tower(source)
    path = Path(source).expanduser()
    if path.exists():
        return _checkpoint_tower(path, source)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _checkpoint_tower(_download(source), source)
    raise ModelSourceError(f"--model {source!r}: no such directory, and not a hub id (owner/name) or "
                           f"random:<preset> (presets: {', '.join(sorted(PRESETS))})")


def siglip_preprocess(image_size: int) -> PreprocessSpec:
    """SigLIP's image processor defaults: bicubic resize to a square, x/255, mean 0.5, std 0.5, RGB."""
    return PreprocessSpec(size=(image_size, image_size))


def hf_image_processor(tower: VisionTower) -> Any:
    """A Hugging Face image processor that does what ``tower.preprocess`` says (the reference the runtime matches).

    Uses the PIL backend explicitly: it needs no torchvision, and it is what SigLIP's processor falls back to.
    """
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    spec = tower.preprocess
    resample = {v: k for k, v in _PIL_RESAMPLE.items()}[spec.resample]
    return SiglipImageProcessorPil(
        size={"height": spec.size[0], "width": spec.size[1]}, resample=resample, rescale_factor=spec.rescale,
        image_mean=list(spec.mean), image_std=list(spec.std), do_convert_rgb=True,
    )


def shape_only_tower(source: str) -> VisionTower:
    """A ``random:<preset>`` tower whose tensors live on torch's meta device: every shape, no memory and no weights.
    What planning a full-size shard set needs (its shards, stages and MACs) without building it."""
    with torch.device("meta"):
        return _random_tower(source, randomise=False)


def _random_tower(source: str, randomise: bool = True) -> VisionTower:
    name = source[len(RANDOM_PREFIX):]
    if name not in PRESETS:
        raise ModelSourceError(f"--model {source!r}: unknown random preset; choose one of "
                               f"{', '.join(RANDOM_PREFIX + p for p in sorted(PRESETS))}")
    architecture, sizes = PRESETS[name]
    torch.manual_seed(RANDOM_SEED)
    if architecture == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(**sizes)
        module = SiglipVisionModel(config)
    else:
        from transformers import SmolVLMVisionConfig
        from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

        config = SmolVLMVisionConfig(**sizes)
        module = SmolVLMVisionTransformer(config)
    if randomise:
        _randomise_norms(module)
    return _finish(architecture, source, module, config, siglip_preprocess(config.image_size))


def _randomise_norms(module: nn.Module) -> None:
    """Fresh LayerNorms are identity maps (weight 1, bias 0), which would hide a wrong eps or scale fold; give them
    seeded non-trivial affine parameters, as trained checkpoints have."""
    generator = torch.Generator().manual_seed(RANDOM_SEED + 1)
    for child in module.modules():
        if isinstance(child, nn.LayerNorm):
            with torch.no_grad():
                child.weight.copy_(1.0 + 0.2 * torch.randn(child.weight.shape, generator=generator))
                child.bias.copy_(0.1 * torch.randn(child.bias.shape, generator=generator))


def _checkpoint_tower(path: Path, source: str) -> VisionTower:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"--model {source!r}: {config_path} is missing; point --model at a Hugging Face "
                               "checkpoint folder (config.json + *.safetensors)")
    config_data = json.loads(config_path.read_text())
    model_type = config_data.get("model_type", "")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelSourceError(f"--model {source!r}: no *.safetensors weights in {path}; download the full "
                               "checkpoint (e.g. `huggingface-cli download <id> --local-dir DIR`)")
    if model_type in SIGLIP2_MODEL_TYPES:
        raise ModelSourceError(f"--model {source!r}: SigLIP 2 checkpoints (model_type {model_type!r}) are not "
                               "supported: their NaFlex patch embedding is not the SigLIP graph this builder cuts; "
                               "use a SigLIP (e.g. google/siglip-base-patch16-512) or SmolVLM checkpoint")
    preprocess = _preprocess_from_checkpoint(path, config_data)
    if model_type in SIGLIP_MODEL_TYPES:
        from transformers import SiglipVisionModel

        # A full SigLIP checkpoint (vision + text) loads too: SiglipVisionConfig takes its vision_config and the
        # text tower's weights are ignored (listed as "unexpected" by transformers: expected here).
        with quiet_transformers():
            module = SiglipVisionModel.from_pretrained(path, dtype=torch.float32)
        return _finish("siglip", source, module, module.config, preprocess, path)
    if model_type in SMOLVLM_MODEL_TYPES:
        return _finish("smolvlm", source, *_smolvlm_from_checkpoint(path, config_data), preprocess, path)
    raise ModelSourceError(f"--model {source!r}: model_type {model_type!r} is not supported; expected a SigLIP "
                           f"({', '.join(SIGLIP_MODEL_TYPES)}) or SmolVLM ({', '.join(SMOLVLM_MODEL_TYPES)}) "
                           "checkpoint")


def _smolvlm_from_checkpoint(path: Path, config_data: dict[str, Any]) -> tuple[nn.Module, Any]:
    from safetensors.torch import load_file
    from transformers import SmolVLMVisionConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

    vision_data = config_data.get("vision_config", config_data)
    vision_data = {k: v for k, v in vision_data.items() if k not in ("model_type", "architectures")}
    config = SmolVLMVisionConfig(**vision_data)
    module = SmolVLMVisionTransformer(config)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    # The tower sits under model.vision_model. in the full VLM, at the root in a vision-only export.
    prefixes = ("model.vision_model.", "vision_model.", "")
    for prefix in prefixes:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if "post_layernorm.weight" in picked:
            missing, _ = module.load_state_dict(picked, strict=False)
            if missing:
                raise ModelSourceError(f"{path}: vision tower weights incomplete, missing {missing[:3]}...")
            return module.float(), config
    raise ModelSourceError(f"{path}: no SmolVLM vision tower weights (model.vision_model.*) in the safetensors files")


def _preprocess_from_checkpoint(path: Path, config_data: dict[str, Any]) -> PreprocessSpec:
    vision = config_data.get("vision_config", config_data)
    image_size = int(vision.get("image_size", 224))
    spec = siglip_preprocess(image_size)
    processor_path = path / "preprocessor_config.json"
    if not processor_path.is_file():
        return spec
    data = json.loads(processor_path.read_text())
    resample = data.get("resample", 3)
    return PreprocessSpec(
        size=(image_size, image_size),  # the tower's fixed input; SmolVLM's tiling processor resizes per tile
        resample=_PIL_RESAMPLE.get(int(resample), "bicubic") if isinstance(resample, int) else str(resample),
        rescale=float(data.get("rescale_factor", spec.rescale)),
        mean=tuple(float(v) for v in data.get("image_mean", spec.mean)),
        std=tuple(float(v) for v in data.get("image_std", spec.std)),
    )


def _download(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        # *.model: spiece.model, the SigLIP tokenizer that --text needs.
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise ModelSourceError(f"--model {hub_id!r}: could not download from the Hugging Face hub "
                               f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Download it where the "
                               "hub is reachable (`huggingface-cli download <id> --local-dir DIR`) and pass "
                               "--model DIR") from None


def _finish(architecture: str, source: str, module: nn.Module, config: Any, preprocess: PreprocessSpec,
            checkpoint: Path | None = None) -> VisionTower:
    module.eval().float()
    if hasattr(module, "config"):
        # eager attention: the exported graph must be plain matmul/softmax that ONNX and the RKNN compiler fuse.
        module.config._attn_implementation = "eager"
    # SigLIP's patch conv drops a remainder (So400m/14 at 384 px: 27 x 27 patches, as transformers counts them);
    # SmolVLM's bucketed position ids assume whole patches.
    if config.image_size < config.patch_size or (architecture == "smolvlm" and config.image_size % config.patch_size):
        raise ModelSourceError(f"{source}: image size {config.image_size} is not divisible by patch size "
                               f"{config.patch_size}; the encoder needs a whole number of patches")
    return VisionTower(architecture, source, module, config, preprocess, checkpoint)
