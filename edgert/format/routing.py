"""How a mixture of experts picks a token's experts, from its router's logits: the definition
the reference forward and the planner's trace replays share (the C forward pass, forward.c's
``route``, computes the same choice and is tested against it)."""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def route(cfg, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per token: (indices (n, k), weights (n, k)).

    Softmax over all experts, keep the k largest probabilities (ties to the lower index), and
    renormalise them to sum to 1 when the architecture does (Mixtral) — Qwen2-MoE and OLMoE use
    the raw probabilities; experts split from a dense FFN (``expert_weights_unit``) count with
    weight 1.
    """
    probs = softmax(logits.astype(np.float32), axis=-1)
    k = cfg.n_experts_used
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    if cfg.expert_weights_unit:
        return idx, np.ones(idx.shape, np.float32)
    w = np.take_along_axis(probs, idx, axis=-1)
    if cfg.expert_weights_norm:
        w = w / np.sum(w, axis=-1, keepdims=True)
    return idx, w.astype(np.float32)
