"""Rotary position embedding: the cos and sin tables each layer applies.

A model has at most two rotary embeddings: the global one (``rope_theta``, ``rope_scale``) and
that of its sliding-window layers (``rope_theta_swa``, ``rope_scale_swa``; Gemma 3); some layers
apply none (SmolLM3). Frequencies may be divided per dimension by factors the model carries
(Llama 3.1's ``rope_freqs``, Phi-3's LongRoPE pair), and cos and sin multiplied by an attention
factor (LongRoPE). The angle of pair i at position p is ``p * scale * theta**(-2i/rope_dim) /
factor[i]``.
"""

from __future__ import annotations

import numpy as np

from edgert.errors import ModelFormatError
from edgert.format import names
from edgert.format.model import ModelConfig

#: the rotary embeddings a model may have, in the order the C forward pass numbers them
KINDS = ("global", "swa")


def factors_name(cfg: ModelConfig, max_ctx: int) -> str | None:
    """The tensor dividing the frequencies at context ``max_ctx``, None without one."""
    if cfg.rope_factors == "freqs":
        return names.ROPE_FREQS
    if cfg.rope_factors == "longrope":
        long = max_ctx > (cfg.rope_orig_ctx or cfg.context_length)
        return names.ROPE_FACTORS_LONG if long else names.ROPE_FACTORS_SHORT
    return None


def layer_index(cfg: ModelConfig) -> list[int]:
    """Per layer, the position in KINDS of the rotary embedding it applies; -1: none."""
    return [-1 if (k := cfg.rope_kind(i)) is None else KINDS.index(k) for i in range(cfg.n_layers)]


def tables(
    cfg: ModelConfig, positions: np.ndarray, factors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each (len(KINDS), n, rope_dim / 2) float32, for ``positions`` (the sliding
    layers' table stays zero in a model without them: no layer reads it)."""
    half = cfg.rope_dim // 2
    pos = np.asarray(positions, dtype=np.float64)
    cos = np.zeros((len(KINDS), len(pos), half), np.float32)
    sin = np.zeros_like(cos)
    if not half:
        return cos, sin
    div = np.ones(half) if factors is None else np.asarray(factors, np.float64).reshape(-1)
    if div.shape != (half,):
        raise ModelFormatError(f"{div.shape[0]} rope frequency factors for {half} rotary pairs")
    kinds = ((cfg.rope_theta, cfg.rope_scale), (cfg.rope_theta_swa, cfg.rope_scale_swa))
    for j, (theta, scale) in enumerate(kinds[: len(KINDS) if cfg.swa_layers else 1]):
        inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / cfg.rope_dim) / div
        ang = (pos * scale)[:, None] * inv_freq[None, :]
        cos[j] = np.cos(ang) * cfg.rope_attn_factor
        sin[j] = np.sin(ang) * cfg.rope_attn_factor
    return cos, sin
