"""Tiny checkpoints saved the way transformers saves them, for the tests that need a real checkpoint folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rk_siglip_ros.builder.text_tower import random_tokenizer

LOG_SCALE, BIAS = math.log(12.0), -2.5  # not the random presets' values: proves they come from the checkpoint


def save_tiny_siglip(folder: Path, strip_specials: bool = False, legacy: bool | None = None) -> Path:
    """A tiny SigLIP (vision + text) saved by transformers, with a SentencePiece tokenizer saved beside it."""
    from transformers import SiglipConfig, SiglipModel

    tokenizer = random_tokenizer(folder)
    torch.manual_seed(7)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, projection_size=64, pad_token_id=1,
                         eos_token_id=1, bos_token_id=None),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=8))
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(LOG_SCALE)
        model.logit_bias.fill_(BIAS)
    model.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    data = json.loads(config_path.read_text())
    if strip_specials:  # as google/siglip-* tokenizer_config.json files have it: </s> and <unk> eat spaces
        for token in data["added_tokens_decoder"].values():
            token.update(lstrip=True, rstrip=True)
    if legacy is not None:  # legacy=false makes transformers edit the SentencePiece model (no dummy prefix)
        data["legacy"] = legacy
    config_path.write_text(json.dumps(data))
    return folder
