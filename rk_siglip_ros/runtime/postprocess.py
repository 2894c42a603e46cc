"""What the host does to the last shard's outputs: pooled output or mean of the tokens -> a unit embedding."""

from __future__ import annotations

import numpy as np


def l2_normalise(vector: np.ndarray) -> np.ndarray:
    """``vector / ||vector||`` in float32 (a zero vector stays zero rather than becoming NaN)."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0.0 else vector


def l2_normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length, float32 (a zero row stays zero)."""
    matrix = np.asarray(matrix, np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.where(norms > 0.0, norms, 1.0)).astype(np.float32)


def pooled_embedding(pooled: np.ndarray | None, tokens: np.ndarray | None) -> np.ndarray:
    """The (D,) embedding: the model's pooled output, or the mean of the tokens when the model has no head."""
    if pooled is not None:
        return l2_normalise(np.asarray(pooled).reshape(-1))
    if tokens is None:
        raise ValueError("neither a pooled output nor tokens to pool")
    return l2_normalise(token_matrix(tokens).mean(axis=0))


def token_matrix(tokens: np.ndarray) -> np.ndarray:
    """(1, T, C) or (T, C) -> (T, C) float32."""
    tokens = np.asarray(tokens, dtype=np.float32)
    return tokens.reshape(-1, tokens.shape[-1])
