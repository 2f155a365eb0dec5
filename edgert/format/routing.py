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


def spread(cfg, logits: np.ndarray) -> dict:
    """How widely a routing trace's tokens spread over the experts (``logits``: (tokens, layers,
    experts) router logits, as the compiler records them): per layer, how many distinct experts
    the tokens pick, and the share of a token's experts the next token picks too; medians and
    means over the layers. A cache holds experts well where few are used or consecutive tokens
    share theirs."""
    n, n_layers, _ = logits.shape
    k = cfg.n_experts_used
    distinct, overlap = [], []
    for layer in range(n_layers):
        idx, _ = route(cfg, logits[:, layer])
        distinct.append(len(np.unique(idx)))
        s = np.sort(idx, axis=1)
        same = [len(np.intersect1d(s[t], s[t + 1], assume_unique=True)) for t in range(n - 1)]
        overlap.append(float(np.mean(same)) / k if same else 0.0)
    return {
        "tokens": int(n),
        "distinct_experts_median": float(np.median(distinct)),
        "distinct_experts_range": [int(min(distinct)), int(max(distinct))],
        "next_token_overlap": float(np.mean(overlap)),
    }
