"""`build_shards --text`: the checkpoint's text tower to ONNX, its tokenizer files alongside, both verified.

The text tower runs on the CPU with ONNX Runtime (a few ms per label, once per label change); the NPU stays for
images. Verification holds the export to transformers' ``get_text_features`` (cos >= 0.99999, fp32) and the
runtime tokenizer (:mod:`rk_siglip_ros.text`, sentencepiece only) to the checkpoint's Hugging Face tokenizer (the
same ids for a set of probe texts). Offline only: imports torch and transformers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rk_siglip_ros.builder.export_onnx import quiet_export
from rk_siglip_ros.builder.models import (
    PRESETS,
    RANDOM_PREFIX,
    RANDOM_SEED,
    SIGLIP_MODEL_TYPES,
    ModelSourceError,
    VisionTower,
    quiet_transformers,
)
from rk_siglip_ros.builder.verify import VerificationError, cosine
from rk_siglip_ros.manifest import SpecialToken, TextSpec, TokenizerSpec

TEXT_DIR = "text"
TEXT_ONNX = f"{TEXT_DIR}/text.onnx"
TOKENIZER_DIR = f"{TEXT_DIR}/tokenizer"
SENTENCEPIECE_MODEL = f"{TEXT_DIR}/sentencepiece.model"
TEXT_MIN_COS = 0.99999  # fp32 ONNX vs transformers, as for the image shards
SIGLIP_MAX_LENGTH = 64  # SigLIP's text tower has 64 positions and was trained on text padded to 64
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.json")
# Random presets: SigLIP's initial temperature and bias from the paper (t' = log 10, b = -10).
RANDOM_LOG_SCALE = math.log(10.0)
RANDOM_BIAS = -10.0
# Probe texts for the tokenizer check: case, punctuation, whitespace runs, digits, non-ASCII, special tokens in the
# text, and one longer than max_length (truncation).
PROBE_TEXTS = (
    "a photo of a cat",
    "A Photo of a DOG!",
    "  a red   door,\tnext to a wall.  ",
    "robot #3 near pallet 42 (left)",
    "café au lait: naïve façade",
    "a person</s> with a hat <unk> and shoes",
    "</s>",
    "\u2581a photo",
    " ".join(["a very long caption"] * 40),
)
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_BASE_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)


@dataclass
class TextTower:
    """A loaded text tower, eval mode, float32, with the checkpoint's tokenizer and its files."""

    module: nn.Module  # SiglipTextModel: input_ids -> pooler_output, the text embedding (get_text_features)
    tokenizer: Any  # the checkpoint's Hugging Face tokenizer (SiglipTokenizer)
    tokenizer_files: list[Path]
    logit_scale: float  # the multiplier: exp of the checkpoint's log scale
    logit_bias: float
    max_length: int
    embedding_dim: int
    workdir: Path | None = None  # random presets: where the generated tokenizer lives (removed by close)

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def load_text_tower(source: str, vision: VisionTower) -> TextTower:
    """The text tower of ``source`` (``random:<preset>`` or a SigLIP checkpoint folder); ModelSourceError when the
    model has none."""
    if vision.architecture != "siglip":
        raise ModelSourceError(f"--text: {source} is a vision-only model ({vision.architecture} tower, no head; its "
                               "embeddings are not SigLIP image-text embeddings); drop --text, or build a SigLIP "
                               "checkpoint with its text tower")
    if vision.checkpoint is None:
        return _random_text_tower(source, vision)
    return _checkpoint_text_tower(vision.checkpoint, source, vision)  # a hub id: the folder it was downloaded to


def _random_text_tower(source: str, vision: VisionTower) -> TextTower:
    from transformers import SiglipTextConfig, SiglipTextModel

    workdir = Path(tempfile.mkdtemp(prefix="rk_siglip_text_"))
    try:
        tokenizer = random_tokenizer(workdir / "tokenizer")
        sizes = _BASE_TEXT if PRESETS[source[len(RANDOM_PREFIX):]][1]["hidden_size"] >= 768 else _TINY_TEXT
        config = SiglipTextConfig(**sizes, vocab_size=len(tokenizer), max_position_embeddings=SIGLIP_MAX_LENGTH,
                                  projection_size=vision.hidden_size, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        torch.manual_seed(RANDOM_SEED + 2)
        module = _eager(SiglipTextModel(config))
        files = sorted((workdir / "tokenizer").iterdir())
        return TextTower(module, tokenizer, files, math.exp(RANDOM_LOG_SCALE), RANDOM_BIAS, SIGLIP_MAX_LENGTH,
                         vision.hidden_size, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def random_tokenizer(folder: Path) -> Any:
    """A small SentencePiece model trained here on generated text (no hub), as SiglipTokenizer saved in ``folder``:
    SigLIP's special tokens and ids (pad 0 ``<pad>``, eos 1 ``</s>``, unk 2 ``<unk>``), deterministic."""
    import sentencepiece
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_random_corpus()), model_prefix=str(folder / "spiece"), vocab_size=256,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (folder / "spiece.vocab").unlink(missing_ok=True)
    tokenizer = SiglipTokenizer(str(folder / "spiece.model"), model_max_length=SIGLIP_MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _random_corpus() -> list[str]:
    import itertools
    import string

    words = ("a an the photo picture of with on in near and red green blue yellow black white small big old new "
             "cat dog door person people car truck tree forklift robot table chair kitchen street road sky wall "
             "window floor box shelf pallet light lamp astronaut rocket coffee cup camera hand face man woman child "
             "bird horse grass water building office warehouse outside inside dark bright night day moon sun").split()
    lines = [" ".join(triple) for triple in itertools.islice(itertools.permutations(words[:12], 3), 800)]
    lines += [f"{a} {b} {c}" for a, b, c in zip(words, words[7:] + words[:7], words[19:] + words[:19], strict=True)]
    return [*lines, string.ascii_lowercase, string.digits]


def _checkpoint_text_tower(path: Path, source: str, vision: VisionTower) -> TextTower:
    config_data = json.loads((path / "config.json").read_text())
    model_type = config_data.get("model_type", "")
    if model_type not in SIGLIP_MODEL_TYPES or "text_config" not in config_data:
        raise ModelSourceError(f"--text: {source} has no text tower (model_type {model_type!r}, no text_config); "
                               "use a full SigLIP checkpoint (vision + text, e.g. google/siglip-base-patch16-512) "
                               "or drop --text")
    files = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not (path / "spiece.model").is_file():
        raise ModelSourceError(f"--text: {path} has no spiece.model (the SigLIP tokenizer); download the "
                               "checkpoint's tokenizer files too (`huggingface-cli download <id> --local-dir DIR`)")
    from transformers import AutoTokenizer, SiglipTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as error:  # noqa: BLE001 - ImportError (a library transformers wants), OSError, ValueError
        raise ModelSourceError(f"--text: transformers cannot load the tokenizer in {path} "
                               f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if type(tokenizer).__name__ != "SiglipTokenizer":
        raise ModelSourceError(f"--text: {source}'s tokenizer is {type(tokenizer).__name__}; the runtime reproduces "
                               "SiglipTokenizer (SentencePiece) only")
    with quiet_transformers():
        # The text weights only: the vision tower is already loaded (load_vision_tower), once is enough.
        model = _eager(SiglipTextModel.from_pretrained(path, dtype=torch.float32))
    log_scale, bias = _logit_parameters(path, source)
    max_length = int(model.config.max_position_embeddings)
    width = int(getattr(model, "text_model", model).head.out_features)  # transformers 4.x wraps it, 5.x does not
    if width != vision.hidden_size:
        raise ModelSourceError(f"--text: {source}'s text embeddings are {width} wide, its image embeddings "
                               f"{vision.hidden_size}; not a matching SigLIP pair")
    return TextTower(model, tokenizer, files, math.exp(log_scale), bias, max_length, width)


def _logit_parameters(path: Path, source: str) -> tuple[float, float]:
    """SigLIP's log temperature and bias (``logit_scale``, ``logit_bias``: top-level tensors of a full checkpoint,
    outside both towers), read from its safetensors without loading the rest."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    values = []
    for name in ("logit_scale", "logit_bias"):
        file = path / weight_map.get(name, "model.safetensors")
        if not file.is_file():
            raise ModelSourceError(f"--text: {source} has no {name} in {file.name} (a full SigLIP checkpoint has it, "
                                   "in *.safetensors); download the whole checkpoint")
        with safe_open(str(file), framework="pt") as weights:
            if name not in weights.keys():
                raise ModelSourceError(f"--text: {source} has no {name} in {file.name}; not a full SigLIP checkpoint")
            values.append(float(weights.get_tensor(name).reshape(-1)[0]))
    return values[0], values[1]


def _eager(module: nn.Module) -> nn.Module:
    module.eval().float()
    module.config._attn_implementation = "eager"  # plain matmul/softmax in the ONNX graph
    for child in module.modules():
        if hasattr(child, "config") and child is not module:
            child.config._attn_implementation = "eager"
    return module


class _TextFeatures(nn.Module):
    """input_ids -> pooled text embedding (not normalised), exactly SiglipTextModel's pooler_output."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).pooler_output


# ------------------------------------------------------------------------------------------------ build + verify


def tokenizer_spec(tower: TextTower, model_file: str, files: list[str]) -> TokenizerSpec:
    tokenizer = tower.tokenizer
    specials = {str(token): SpecialToken(int(index), bool(token.lstrip), bool(token.rstrip))
                for index, token in tokenizer.added_tokens_decoder.items()}
    return TokenizerSpec(kind="siglip-sentencepiece", model=model_file, max_length=tower.max_length,
                         padding="max_length", lowercase=bool(getattr(tokenizer, "do_lower_case", True)),
                         eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id),
                         unk_token=str(tokenizer.unk_token), special_tokens=specials, files=files)


def hf_token_ids(tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """The ids the Hugging Face tokenizer gives, as SigLIP expects them (padded to max_length, truncated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This sequence already has </s>": a probe text contains it on purpose
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                            return_tensors="np")
    return np.asarray(encoded["input_ids"], np.int64)


def build_text_side(tower: TextTower, folder: Path, verify: bool) -> TextSpec:
    """Write text.onnx, the SentencePiece model and the tokenizer files into ``folder``; verify; return the spec."""
    from rk_siglip_ros.text import SiglipSentencePieceTokenizer

    (folder / TOKENIZER_DIR).mkdir(parents=True)
    copied = []
    for file in tower.tokenizer_files:
        shutil.copyfile(file, folder / TOKENIZER_DIR / file.name)
        copied.append(f"{TOKENIZER_DIR}/{file.name}")
    # The model exactly as the HF tokenizer runs it (transformers may edit the proto, e.g. legacy=False).
    effective = tower.tokenizer.sp_model.serialized_model_proto()
    original = folder / TOKENIZER_DIR / "spiece.model"
    if original.is_file() and original.read_bytes() == effective:
        model_file = f"{TOKENIZER_DIR}/spiece.model"
    else:
        (folder / SENTENCEPIECE_MODEL).write_bytes(effective)
        model_file = SENTENCEPIECE_MODEL
    spec = TextSpec(onnx=TEXT_ONNX, tokenizer=tokenizer_spec(tower, model_file, copied),
                    embedding_dim=tower.embedding_dim, logit_scale=tower.logit_scale, logit_bias=tower.logit_bias)

    texts = list(PROBE_TEXTS)
    reference_ids = hf_token_ids(tower.tokenizer, texts, tower.max_length)
    runtime_ids = SiglipSentencePieceTokenizer(folder / model_file, spec.tokenizer)(texts).ids
    mismatched = [text for text, a, b in zip(texts, reference_ids, runtime_ids, strict=True)
                  if not np.array_equal(a, b)]
    if mismatched:
        raise VerificationError(f"text tokenizer: the runtime's ids differ from the Hugging Face tokenizer's for "
                                f"{len(mismatched)} probe text(s), first {mismatched[0][:60]!r}")
    export = _TextFeatures(tower.module).eval()
    example = torch.from_numpy(reference_ids[:2])
    quiet_export(export, (example,), folder / TEXT_ONNX, input_names=[spec.input], output_names=[spec.output],
                 dynamic_axes={spec.input: {0: "batch"}, spec.output: {0: "batch"}})
    verification: dict[str, Any] = {"tokenizer_probe_texts": len(texts), "tokenizer_ids_match": True,
                                    "thresholds": {"onnx": TEXT_MIN_COS}}
    if verify:
        verification["onnx_vs_fp32_cos"] = verify_text_onnx(tower, folder / TEXT_ONNX, reference_ids, spec)
    spec.verification = verification
    return spec


@torch.no_grad()
def verify_text_onnx(tower: TextTower, onnx_path: Path, ids: np.ndarray, spec: TextSpec) -> float:
    """Worst cos between ONNX Runtime's text embeddings and transformers' get_text_features; raises below the
    threshold."""
    from rk_siglip_ros.runtime.backends.onnxruntime import create_session

    session = create_session(onnx_path, 1)
    exported = session.run([spec.output], {spec.input: ids})[0]
    reference = tower.module(input_ids=torch.from_numpy(ids)).pooler_output.numpy()  # transformers' own forward
    worst = min(cosine(a, b) for a, b in zip(exported, reference, strict=True))
    if not worst >= TEXT_MIN_COS:
        raise VerificationError(f"text tower: ONNX vs transformers get_text_features cos {worst:.7f} < {TEXT_MIN_COS}")
    return worst
