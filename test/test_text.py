"""The text side against transformers on a tiny SigLIP checkpoint saved by transformers with its tokenizer files:
token ids identical to the HF tokenizer's, text embeddings cos >= 0.9999 to get_text_features, probabilities equal
to sigmoid(logits_per_image) within 1e-4; plus the refusals (no text tower, bad labels, altered files)."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos
from tiny_checkpoints import BIAS, save_tiny_siglip

from rk_siglip_ros.builder.build import build_shards
from rk_siglip_ros.builder.models import ModelSourceError
from rk_siglip_ros.builder.text_tower import hf_token_ids
from rk_siglip_ros.cli.encode_text import main as encode_text
from rk_siglip_ros.manifest import ManifestError, load_manifest
from rk_siglip_ros.runtime.encoder import SiglipEncoder
from rk_siglip_ros.text import MAX_LABELS, TextEncoder, TextError, check_texts

TEXTS = ["a photo of an astronaut", "a cup of coffee", "a cat", "A ROCKET!", "a grey camera on a tripod",
         "robot #3, near pallet 42", " ".join(["a very long caption"] * 30)]
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")




@pytest.fixture(scope="module")
def checkpoint(tiny_siglip_checkpoint) -> Path:
    return tiny_siglip_checkpoint


@pytest.fixture(scope="module")
def shards(tiny_text_shards) -> Path:
    return tiny_text_shards


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import SiglipModel

    return SiglipModel.from_pretrained(checkpoint, attn_implementation="eager").eval()


def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def hf_ids(tokenizer, texts: list[str]) -> np.ndarray:
    """As SigLIP expects its text: padded to max_length 64 (and cut there)."""
    return hf_token_ids(tokenizer, texts, 64)


def fuzz_texts(count: int, seed: int = 0) -> list[str]:
    """Random texts mixing words, case, punctuation, whitespace runs, digits, accents and special-token strings."""
    generator = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "  \t\néàüß\u2581"
    words = ["a", "photo", "of", "Cat", "DOOR", "</s>", "<unk>", "forklift", "robot-3", "x"]
    texts = []
    for _ in range(count):
        parts = [generator.choice(words) if generator.random() < 0.6 else
                 "".join(generator.choice(alphabet) for _ in range(generator.randint(1, 8)))
                 for _ in range(generator.randint(1, 30))]
        texts.append(generator.choice(["", " ", "  "]).join(parts))
    return texts


@pytest.mark.parametrize(("strip_specials", "legacy"), [(False, None), (True, None), (False, False)])
def test_token_ids_identical_to_hf_tokenizer(tmp_path, strip_specials, legacy):
    checkpoint = save_tiny_siglip(tmp_path / "ckpt", strip_specials=strip_specials, legacy=legacy)
    out = tmp_path / "shards"
    try:
        hf_tokenizer(checkpoint)
    except ImportError as error:  # legacy=False needs protobuf >= 5; rknn-toolkit2 pins 4.25 here
        with pytest.raises(ModelSourceError, match="transformers cannot load the tokenizer") as raised:
            build_shards(str(checkpoint), out, formats=("onnx",), progress=False, text=True)
        assert "\n" not in str(raised.value) and not out.exists()
        pytest.skip(f"transformers cannot load this tokenizer here ({error}); the build refuses it in one line")
    build_shards(str(checkpoint), out, formats=("onnx",), progress=False, text=True)
    texts = [*TEXTS, *fuzz_texts(300)]
    reference = hf_ids(hf_tokenizer(checkpoint), texts)
    with TextEncoder.open(out) as encoder:
        ours = encoder.tokenizer(texts)
    mismatched = [t for t, a, b in zip(texts, reference, ours.ids, strict=True) if not np.array_equal(a, b)]
    assert not mismatched, f"{len(mismatched)} texts differ, first {mismatched[0]!r}"
    assert ours.ids.dtype == np.int64 and ours.ids.shape == (len(texts), 64)
    assert TEXTS.index(TEXTS[-1]) in ours.truncated  # the long caption was cut, and that is reported


def test_shard_set_carries_the_checkpoint_tokenizer_files(shards, checkpoint):
    texts = fuzz_texts(50, seed=1)
    copied = hf_tokenizer(shards / "text" / "tokenizer")  # AutoTokenizer loads the copy in the shard set
    assert np.array_equal(hf_ids(copied, texts), hf_ids(hf_tokenizer(checkpoint), texts))
    text = load_manifest(shards).text
    assert text is not None and text.tokenizer.max_length == 64 and text.tokenizer.padding == "max_length"
    assert text.logit_scale == pytest.approx(12.0, rel=1e-6) and text.logit_bias == pytest.approx(BIAS)
    assert text.embedding_dim == 64 and text.verification["tokenizer_ids_match"] is True


def test_text_embeddings_match_get_text_features(shards, checkpoint, hf_model):
    ids = torch.from_numpy(hf_ids(hf_tokenizer(checkpoint), TEXTS))
    with torch.no_grad():  # as SigLIP was trained: input_ids only (no attention mask; the pooled token is a pad)
        reference = hf_model.get_text_features(input_ids=ids).pooler_output.double().numpy()
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    with TextEncoder.open(shards) as encoder:
        ours = encoder.encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 64)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(ours * reference, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_probabilities_equal_sigmoid_logits_per_image(shards, checkpoint, hf_model):
    from rk_siglip_ros.builder.models import hf_image_processor, load_vision_tower

    images = [np.asarray(Image.fromarray(getattr(photos, name)()).convert("RGB")) for name in PHOTO_NAMES]
    labels = TEXTS[:6]
    pixel_values = hf_image_processor(load_vision_tower(str(checkpoint)))(images=images, return_tensors="pt")
    ids = torch.from_numpy(hf_ids(hf_tokenizer(checkpoint), labels))
    with torch.no_grad():
        output = hf_model(input_ids=ids, pixel_values=pixel_values["pixel_values"].float())
    reference = torch.sigmoid(output.logits_per_image).numpy()
    with SiglipEncoder.open(shards, backend="onnxruntime") as encoder:
        embeddings = encoder.encode_batch(images)
    with TextEncoder.open(shards) as text:
        label_set = text.label_set(labels)
    ours = label_set.probabilities(embeddings)
    assert ours.shape == (len(images), len(labels)) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-4
    assert reference.std() > 1e-3  # the comparison is not between constants
    top = label_set.top_k(embeddings[0], 3)
    assert [score for _, score in top] == sorted((score for _, score in top), reverse=True)
    assert top[0] == (labels[int(np.argmax(reference[0]))], pytest.approx(float(reference[0].max()), abs=1e-4))


def test_random_preset_text_tower_builds_offline(shard_factory):
    shards = shard_factory(model="random:tiny", text=True)
    with TextEncoder.open(shards) as encoder:
        embeddings = encoder.encode(["a red door", "a forklift"])
    assert embeddings.shape == (2, 64) and abs(float(embeddings[0] @ embeddings[1])) < 0.999


def test_vision_only_shard_set_says_how_to_get_a_text_tower(shard_factory):
    with pytest.raises(TextError, match="has no text tower; rebuild it with .*--text"):
        TextEncoder.open(shard_factory(model="random:tiny"))


def test_vision_only_models_refuse_text(tmp_path):
    with pytest.raises(ModelSourceError, match="vision-only"):
        build_shards("random:tiny-smolvlm", tmp_path / "a", formats=("onnx",), progress=False, text=True)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(
        tmp_path / "vision-only")
    with pytest.raises(ModelSourceError, match="has no text tower"):
        build_shards(str(tmp_path / "vision-only"), tmp_path / "b", formats=("onnx",), progress=False, text=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_altered_text_file_is_refused(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    with open(copy / "text" / "tokenizer" / "spiece.model", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ManifestError, match="modified or corrupted"):
        TextEncoder.open(copy)
    SiglipEncoder.open(copy, backend="onnxruntime").close()  # the image side does not depend on the text files


def test_text_files_are_hashed_once_per_loaded_manifest(shards, monkeypatch):
    import rk_siglip_ros.manifest as manifest_module

    hashed: list[str] = []
    real_sha256 = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    manifest = load_manifest(shards, verify=())
    for _ in range(3):  # e.g. a benchmark, or the node's label changes: one manifest, several text encoders
        TextEncoder.open(manifest).close()
    files = len(manifest.text.files)
    assert files > 1 and len(hashed) == files and manifest.verified_kinds == {"text"}
    TextEncoder.open(shards).close()  # a folder is loaded afresh, and hashed again
    assert len(hashed) == 2 * files


def test_manifest_text_width_must_match_the_images(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["text"]["embedding_dim"] = 32
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="text tower is 32 wide but the image embeddings are 64"):
        load_manifest(copy)


@pytest.mark.parametrize(("labels", "message"), [
    ([], "no labels given"),
    (["a cat", ""], r"labels\[1\] is empty"),
    (["a cat", "   "], r"labels\[1\] is empty"),
    (["a cat", "a dog", "a cat"], r"labels\[2\] 'a cat' repeats labels\[0\]"),
    ([f"label {i}" for i in range(10_000)], "10000 labels: at most 1000"),
])
def test_bad_labels_are_one_clear_line(labels, message):
    with pytest.raises(TextError, match=message) as raised:
        check_texts(labels)
    assert "\n" not in str(raised.value)


def test_label_limit_is_inclusive():
    assert len(check_texts([f"label {i}" for i in range(MAX_LABELS)])) == MAX_LABELS


def test_text_with_no_words_is_refused(shards):
    with TextEncoder.open(shards) as encoder, pytest.raises(TextError, match="no words"):
        encoder.label_set(["a cat", "?!."])


def test_encode_text_cli(shards, tmp_path, capsys):
    out = tmp_path / "text.npy"
    assert encode_text(["--shards", str(shards), "--out", str(out), *TEXTS]) == 0
    written = np.load(out)
    with TextEncoder.open(shards) as encoder:
        assert np.allclose(written, encoder.encode(TEXTS))
    assert "cut to 64" in capsys.readouterr().err  # the long caption


@pytest.mark.parametrize(("texts", "status", "message"), [
    (["a", "a"], 2, "repeats"),
    (["a", ""], 2, "is empty"),
])
def test_encode_text_cli_refuses_and_writes_nothing(shards, tmp_path, capsys, texts, status, message):
    out = tmp_path / "text.npy"
    assert encode_text(["--shards", str(shards), "--out", str(out), *texts]) == status
    assert message in capsys.readouterr().err and not out.exists()


def test_encode_text_cli_without_text_tower(shard_factory, tmp_path, capsys):
    out = tmp_path / "text.npy"
    assert encode_text(["--shards", str(shard_factory(model="random:tiny")), "--out", str(out), "a cat"]) == 2
    assert "has no text tower" in capsys.readouterr().err and not out.exists()


def test_encode_images_writes_label_probabilities(shards, checkpoint, hf_model, tmp_path, capsys):
    from rk_siglip_ros.cli.encode_images import main as encode_images

    paths = []
    for name in PHOTO_NAMES:
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(getattr(photos, name)()).convert("RGB").save(paths[-1])
    labels = TEXTS[:4]
    out, scores = tmp_path / "emb.npy", tmp_path / "scores.npy"
    assert encode_images(["--shards", str(shards), "--out", str(out), "--labels", *labels, "--scores", str(scores),
                          "--backend", "onnxruntime", *map(str, paths)]) == 0
    embeddings, probabilities = np.load(out), np.load(scores)
    assert probabilities.shape == (len(paths), len(labels)) and probabilities.dtype == np.float32
    with TextEncoder.open(shards) as text:
        vectors = text.encode(labels)
    expected = 1.0 / (1.0 + np.exp(-(embeddings @ vectors.T * 12.0 + BIAS)))
    assert np.abs(probabilities - expected).max() < 1e-5
    assert "4 label(s)" in capsys.readouterr().out


def test_encode_images_labels_refusals_write_nothing(shards, shard_factory, tmp_path, capsys):
    from rk_siglip_ros.cli.encode_images import main as encode_images

    image = tmp_path / "a.png"
    Image.fromarray(photos.astronaut()).save(image)
    out, scores = tmp_path / "emb.npy", tmp_path / "scores.npy"
    vision_only = shard_factory(model="random:tiny")
    cases = [([str(shards), "--labels", "a", "a"], "repeats"),
             ([str(shards), "--labels", "a", ""], "is empty"),
             ([str(vision_only), "--labels", "a cat"], "has no text tower")]
    for arguments, message in cases:
        shards_dir, *rest = arguments
        assert encode_images(["--shards", shards_dir, "--out", str(out), str(image), "--scores", str(scores),
                              *rest]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not scores.exists()
    with pytest.raises(SystemExit):
        encode_images(["--shards", str(shards), "--out", str(out), str(image), "--labels", "a cat"])
    assert "--labels and --scores go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one file for both would silently keep only the scores
        encode_images(["--shards", str(shards), "--out", str(out), str(image), "--labels", "a cat", "--scores",
                       str(out)])
    assert "--scores and --out name the same file" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.update(onnx="../text.onnx"), "text file path '../text.onnx' leaves the shard folder"),
    (lambda text: text["tokenizer"].update(kind="bert-wordpiece"), "tokenizer kind 'bert-wordpiece' is not supported"),
    (lambda text: text.update(logit_scale=float("nan")), "logit_scale nan"),
    (lambda text: text.pop("embedding_dim"), "malformed manifest"),
])
def test_manifest_text_section_is_validated(shards, tmp_path, edit, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data["text"])
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(copy)


def test_a_damaged_tokenizer_model_is_one_text_error(shards, tmp_path):
    """sentencepiece raises on an unparsable model file (it does not return False): a TextError, not a traceback."""
    from rk_siglip_ros.text import SiglipSentencePieceTokenizer

    spec = load_manifest(shards, verify=()).text.tokenizer
    damaged = tmp_path / "spiece.model"
    damaged.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TextError, match="not a SentencePiece model"):
        SiglipSentencePieceTokenizer(damaged, spec)


def test_a_hub_id_builds_its_text_tower_from_the_downloaded_folder(checkpoint, tmp_path):
    """`build_shards --model owner/name --text`: the text tower and tokenizer come from where the hub download
    landed, not from a folder named like the hub id. The hub is not reachable here, so the download is a snapshot
    already in an offline Hugging Face cache, laid out as huggingface_hub lays it out."""
    import os
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "hf-cache"
    repo = cache / "models--rk-siglip-ros-tests--tiny-siglip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(Path(sys.executable).with_name("build_shards")), "--model",
                           "rk-siglip-ros-tests/tiny-siglip", "--out", str(tmp_path / "shards"), "--formats", "onnx",
                           "--text", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with TextEncoder.open(tmp_path / "shards") as text:
        assert text.encode(["a photo of a cat"]).shape == (1, load_manifest(tmp_path / "shards").model.embedding_dim)
    assert load_manifest(tmp_path / "shards").text.logit_bias == pytest.approx(BIAS)
