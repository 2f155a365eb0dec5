"""The 8-bit format for token embeddings and the output head: int8 rows, one float32 scale per
group of 32 columns (like GGML's Q8_0). Row lookups dequantize on the device."""

from __future__ import annotations

import numpy as np

Q8_GROUP = 32


#: values quantized at a time (the temporaries of a 150k-row head stay a few MB)
Q8_CHUNK = 1 << 22


def quantize_q8(w: np.ndarray, group: int = Q8_GROUP) -> dict[str, np.ndarray]:
    """Rows of w (m, k) as int8, one float32 scale per ``group`` columns (k zero-padded)."""
    m, k = w.shape
    pad = (-k) % group
    out = np.empty((m, k + pad), np.int8)
    scales = np.empty((m, (k + pad) // group), np.float32)
    step = max(1, Q8_CHUNK // (k + pad))
    for r in range(0, m, step):  # in row chunks: each row is quantized on its own
        g = np.pad(w[r : r + step], ((0, 0), (0, pad))).reshape(-1, (k + pad) // group, group)
        scale = np.abs(g).max(-1) / 127.0
        q = np.round(
            np.divide(g, scale[..., None], out=np.zeros_like(g), where=scale[..., None] > 0)
        )
        out[r : r + step] = q.astype(np.int8).reshape(len(g), -1)
        scales[r : r + step] = scale
    return {"q": out, "scale": scales}


def dequantize_q8(q: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    m = q.shape[0]
    group = q.shape[1] // scale.shape[1]
    w = q.reshape(m, -1, group).astype(np.float32) * scale[..., None]
    return w.reshape(m, -1)[:, :k]
