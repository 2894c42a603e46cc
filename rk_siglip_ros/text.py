"""The text side at run time: tokenizer + text tower (ONNX Runtime, CPU) + label scoring. No torch, no transformers.

SigLIP was trained so that ``sigmoid(logit_scale * cos(image, text) + logit_bias)`` is the probability that a text
fits an image. A shard set built with ``build_shards --text`` carries the text tower (``text.onnx``), the
SentencePiece model the checkpoint's Hugging Face tokenizer runs, and the scale and bias (manifest ``text``
section). Example::

    with TextEncoder.open("shards/siglip-b16-512") as text:
        labels = text.label_set(["a door", "a person", "a forklift"])   # the text tower runs once here
    probabilities = labels.probabilities(image_embedding)               # per frame: one (L x D) @ (D) product
    best = labels.top_k(image_embedding, 3)                             # [("a person", 0.91), ...]
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rk_siglip_ros.errors import RunFailedError, UserError
from rk_siglip_ros.manifest import Manifest, ManifestError, TokenizerSpec, load_manifest, verify_text_files
from rk_siglip_ros.runtime.postprocess import l2_normalise_rows

# Labels are scored for every frame and each one is a line in a Classification message; the text tower runs on the
# CPU once per change. 1000 labels cost well under 1 % of a frame's encoder time (benchmarks/text_bench.py).
MAX_LABELS = 1000
TEXT_BATCH = 64  # texts per text tower run: bounds memory for long lists, keeps ORT's matmuls large
SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


class TextOutputError(RunFailedError, RuntimeError):
    """The text tower's output is not finite: a broken text tower file, never the texts themselves."""


class TextError(UserError, ValueError):
    """Texts or a shard set the text side cannot use; the message is one line that says what to do."""


# ------------------------------------------------------------------------------------------------- checking


def check_texts(texts: Sequence[str], what: str = "labels", limit: int | None = MAX_LABELS) -> list[str]:
    """The texts as a list, or TextError for an empty list, an empty string, a duplicate or too many."""
    texts = list(texts)
    if not texts:
        raise TextError(f"no {what} given; pass at least one text")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TextError(f"{what}[{index}] is {type(text).__name__}, not a string")
        if not text.strip():
            raise TextError(f"{what}[{index}] is empty; every text must contain something to compare with")
    seen: dict[str, int] = {}
    for index, text in enumerate(texts):
        if text in seen:
            raise TextError(f"{what}[{index}] {text!r} repeats {what}[{seen[text]}]; give each text once")
        seen[text] = index
    if limit is not None and len(texts) > limit:
        raise TextError(f"{len(texts)} {what}: at most {limit} are supported (each is scored on every frame and "
                        "published as one result); use search_bag or encode_text for large vocabularies")
    return texts


# ------------------------------------------------------------------------------------------------ tokenizer


@dataclass(frozen=True)
class Tokens:
    """Token ids as the text tower takes them, and which texts had to be cut to ``max_length``."""

    ids: np.ndarray  # (L, max_length) int64
    truncated: tuple[int, ...]  # indexes of texts longer than max_length tokens (cut as HF's truncation=True does)


class SiglipSentencePieceTokenizer:
    """transformers' SiglipTokenizer, reimplemented on the ``sentencepiece`` library alone.

    Per text, as ``SiglipTokenizer(text, padding="max_length", truncation=True, max_length=64)`` does: split on
    the special tokens (``</s>``, ``<unk>``; with lstrip/rstrip they eat the whitespace beside them), canonicalise
    every other part
    (lowercase, ASCII punctuation removed, whitespace runs collapsed, stripped), encode it with SentencePiece,
    keep at most ``max_length - 1`` ids, append ``</s>``, right-pad with the pad id.
    """

    def __init__(self, model_path: str | Path, spec: TokenizerSpec) -> None:
        try:
            import sentencepiece
        except ImportError as error:
            raise TextError(f"the text tower needs the sentencepiece package ({error}); pip install sentencepiece")\
                from None
        self.spec = spec
        self._sp = sentencepiece.SentencePieceProcessor()
        try:  # sentencepiece raises on a missing or unparsable file (older releases returned False)
            loaded = self._sp.Load(str(model_path))
        except (RuntimeError, OSError) as error:
            raise TextError(f"{model_path}: not a SentencePiece model ({' '.join(str(error).split())}); rebuild the "
                            "shard set with --text") from None
        if not loaded:
            raise TextError(f"{model_path}: not a SentencePiece model; rebuild the shard set with --text")
        self._unk_length = len(self._sp.encode(spec.unk_token, out_type=str))
        # Longest first, so "</s>" wins over a shorter special token that starts at the same place.
        self._specials = sorted(spec.special_tokens, key=len, reverse=True)

    @property
    def max_length(self) -> int:
        return self.spec.max_length

    def __call__(self, texts: Sequence[str]) -> Tokens:
        return self.padded([self.token_ids(text) for text in texts])

    def padded(self, id_lists: Sequence[list[int]]) -> Tokens:
        """Rows of ``max_length`` ids from :meth:`token_ids` lists: truncated, </s> appended, padded."""
        rows = np.full((len(id_lists), self.max_length), self.spec.pad_id, dtype=np.int64)
        truncated = []
        for row, ids in enumerate(id_lists):
            if len(ids) + 1 > self.max_length:  # room for </s>, as HF's truncation counts the special token
                ids = ids[: self.max_length - 1]
                truncated.append(row)
            if not ids or ids[-1] != self.spec.eos_id:  # HF does not add </s> a second time
                ids = [*ids, self.spec.eos_id]
            rows[row, : len(ids)] = ids
        return Tokens(rows, tuple(truncated))

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` without </s>, padding or truncation (``tokenizer.encode(text, add_special_tokens=
        False)``)."""
        pieces: list[str] = []
        for part, special in self._split_special(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")):
            if special:
                pieces.append(part)
            elif part:
                pieces.extend(self._encode_part(part))
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.spec.special_tokens:
            pieces = pieces[1:]
        specials = self.spec.special_tokens
        return [specials[p].id if p in specials else self._sp.piece_to_id(p) for p in pieces]

    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        """(part, is_special) in order; the whitespace around a special token is stripped (lstrip/rstrip)."""
        parts: list[tuple[str, bool]] = []
        start = position = 0
        while position < len(text):
            match = next((token for token in self._specials if text.startswith(token, position)), None)
            if match is None:
                position += 1
                continue
            parts.append((text[start:position], False))
            parts.append((match, True))
            position = start = position + len(match)
        parts.append((text[start:], False))
        specials = self.spec.special_tokens
        for index, (part, special) in enumerate(parts):
            if special:
                continue
            if index > 0 and specials[parts[index - 1][0]].rstrip:  # the token before eats leading whitespace
                part = part.lstrip()
            if index < len(parts) - 1 and specials[parts[index + 1][0]].lstrip:
                part = part.rstrip()
            parts[index] = (part, False)
        return parts

    def _encode_part(self, text: str) -> list[str]:
        if self.spec.lowercase:
            text = text.lower()
        text = _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()
        # Prefixing the unk token and dropping its pieces keeps SentencePiece from treating the text as a sentence
        # start (transformers does exactly this).
        pieces = self._sp.encode(self.spec.unk_token + text, out_type=str)
        return pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces


TOKENIZERS = {"siglip-sentencepiece": SiglipSentencePieceTokenizer}


def open_tokenizer(manifest: Manifest) -> SiglipSentencePieceTokenizer:
    """The tokenizer the manifest's text section names (its files must already be verified)."""
    if manifest.text is None or manifest.root is None:
        raise TextError(no_text_tower(manifest))
    spec = manifest.text.tokenizer
    return TOKENIZERS[spec.kind](manifest.root / spec.model, spec)


# ------------------------------------------------------------------------------------------------ text tower


def probabilities(image_embeddings: np.ndarray, text_embeddings: np.ndarray, logit_scale: float,
                  logit_bias: float) -> np.ndarray:
    """(N, L) float32: sigmoid(logit_scale * cos + logit_bias) for unit image rows (N, D) and text rows (L, D)."""
    logits = np.asarray(image_embeddings, np.float32) @ np.asarray(text_embeddings, np.float32).T
    logits = logits * np.float32(logit_scale) + np.float32(logit_bias)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # sigmoid, without overflow warnings


@dataclass(frozen=True)
class LabelSet:
    """Labels with their text embeddings: what a frame is scored against (no text tower needed any more)."""

    labels: tuple[str, ...]
    embeddings: np.ndarray  # (L, D) float32, unit rows
    logit_scale: float
    logit_bias: float
    truncated: tuple[int, ...] = ()  # labels cut to max_length tokens
    max_length: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def truncation_note(self) -> str | None:
        """One line naming the labels cut to max_length tokens, or None."""
        return truncation_note(self.labels, self.truncated, self.max_length)

    def probabilities(self, image_embedding: np.ndarray) -> np.ndarray:
        """(L,) float32 for one unit image embedding (D,), or (N, L) for (N, D)."""
        image = np.asarray(image_embedding, np.float32)
        scores = probabilities(image.reshape(-1, image.shape[-1]), self.embeddings, self.logit_scale,
                               self.logit_bias)
        return scores[0] if image.ndim == 1 else scores

    def top_k(self, image_embedding: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable labels for one image, most probable first (ties: label order)."""
        scores = self.probabilities(image_embedding)
        k = max(0, min(int(k), len(self.labels)))
        if k == 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.lexsort((best, -scores[best]))]
        return [(self.labels[i], float(scores[i])) for i in best]


class TextEncoder:
    """Texts -> unit text embeddings with the shard set's text tower on ONNX Runtime. Use :meth:`open`."""

    def __init__(self, manifest: Manifest, session: Any, tokenizer: SiglipSentencePieceTokenizer) -> None:
        assert manifest.text is not None
        self.manifest = manifest
        self.spec = manifest.text
        self.tokenizer = tokenizer
        self._session = session

    @classmethod
    def open(cls, shards: str | Path | Manifest, threads: int | None = None) -> TextEncoder:
        """Load (or take an already loaded) shard set, check its text files' sha256 (unless this Manifest's were
        checked already, as ``verified_kinds`` records), open the text tower."""
        manifest = text_manifest(shards)
        if "text" not in manifest.verified_kinds:
            verify_text_files(manifest, str(manifest.root))
        from rk_siglip_ros.runtime.backends.onnxruntime import create_session

        path = manifest.root / manifest.text.onnx  # type: ignore[operator]
        try:
            session = create_session(path, threads or os.cpu_count() or 1)
        except Exception as error:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            raise TextError(f"onnxruntime cannot load the text tower {path}: {error}") from None
        return cls(manifest, session, open_tokenizer(manifest))

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """Token ids for ``texts``; TextError for a text with nothing left after canonicalisation (e.g. "!!!")."""
        id_lists = [self.tokenizer.token_ids(text) for text in texts]
        for index, (text, ids) in enumerate(zip(texts, id_lists, strict=True)):
            if not ids:
                raise TextError(f"text {index} {text!r} has no words once the tokenizer drops punctuation and "
                                "spaces; give it some")
        return self.tokenizer.padded(id_lists)  # each text tokenised once

    def encode(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        """(L, D) float32 unit text embeddings, row i for ``texts[i]`` (texts longer than max_length are cut)."""
        return self.encode_tokens(self.tokenize(texts), progress)

    def encode_tokens(self, tokens: Tokens, progress: Any = None) -> np.ndarray:
        if self._session is None:
            raise TextError("the text encoder is closed")
        rows = []
        for start in range(0, len(tokens.ids), TEXT_BATCH):
            batch = tokens.ids[start:start + TEXT_BATCH]
            rows.append(self._session.run([self.spec.output], {self.spec.input: batch})[0])
            if progress is not None:
                progress(len(batch))
        embeddings = np.concatenate(rows) if rows else np.zeros((0, self.embedding_dim), np.float32)
        if not np.isfinite(embeddings).all():
            raise TextOutputError(f"the text tower {self.spec.onnx} produced values that are not finite (NaN/inf); "
                                  "the shard set's text tower is broken: rebuild it with build_shards --text")
        return l2_normalise_rows(embeddings)

    def label_set(self, labels: Iterable[str], limit: int | None = MAX_LABELS, progress: Any = None) -> LabelSet:
        """Check ``labels`` (TextError: empty, blank, duplicate, too many) and embed them once; ``progress(n)`` is
        called after each batch of n labels."""
        checked = check_texts(list(labels), "labels", limit)
        tokens = self.tokenize(checked)
        return LabelSet(tuple(checked), self.encode_tokens(tokens, progress), self.spec.logit_scale,
                        self.spec.logit_bias, tokens.truncated, self.tokenizer.max_length)

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> TextEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def truncation_note(texts: Sequence[str], truncated: Sequence[int], max_length: int) -> str | None:
    """One line naming the texts cut to ``max_length`` tokens, or None when none was."""
    if not truncated:
        return None
    names = ", ".join(repr(texts[i][:40] + ("..." if len(texts[i]) > 40 else "")) for i in truncated[:3])
    more = f" and {len(truncated) - 3} more" if len(truncated) > 3 else ""
    return (f"note: {len(truncated)} text(s) longer than {max_length} tokens were cut to {max_length} (as the "
            f"Hugging Face tokenizer does with truncation=True): {names}{more}")


def text_manifest(shards: str | Path | Manifest) -> Manifest:
    """The shard set's manifest (read, files unchecked, unless given loaded); TextError when it has no text tower."""
    manifest = shards if isinstance(shards, Manifest) else load_manifest(shards, verify=())
    if manifest.text is None:
        raise TextError(no_text_tower(manifest))
    return manifest


def no_text_tower(manifest: Manifest) -> str:
    where = manifest.root if manifest.root is not None else "the shard set"
    return (f"shard set {where} has no text tower; rebuild it with `build_shards --model {manifest.model.source} "
            f"--out {where} --text --force` (a SigLIP checkpoint with its text tower and tokenizer files)")


__all__ = ["MAX_LABELS", "LabelSet", "ManifestError", "SiglipSentencePieceTokenizer", "TextEncoder", "TextError",
           "Tokens", "check_texts", "no_text_tower", "probabilities", "text_manifest", "truncation_note"]
