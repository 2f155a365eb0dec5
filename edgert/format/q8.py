"""The 8-bit format for token embeddings and the output head: int8 rows, one float32 scale per
group of 32 columns (like GGML's Q8_0). Row lookups dequantize on the device."""

from __future__ import annotations

import numpy as np

Q8_GROUP = 32


def quantize_q8(w: np.ndarray, group: int = Q8_GROUP) -> dict[str, np.ndarray]:
    """Rows of w (m, k) as int8, one float32 scale per ``group`` columns (k zero-padded)."""
    m, k = w.shape
    pad = (-k) % group
    g = np.pad(w, ((0, 0), (0, pad))).reshape(m, -1, group)
    scale = np.abs(g).max(-1) / 127.0
    q = np.round(np.divide(g, scale[..., None], out=np.zeros_like(g), where=scale[..., None] > 0))
    return {"q": q.astype(np.int8).reshape(m, -1)[:, : k + pad], "scale": scale.astype(np.float32)}


def dequantize_q8(q: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    m = q.shape[0]
    group = q.shape[1] // scale.shape[1]
    w = q.reshape(m, -1, group).astype(np.float32) * scale[..., None]
    return w.reshape(m, -1)[:, :k]
