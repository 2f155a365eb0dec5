"""How much of the model the compiled weights keep, measured at compile time on held-back
calibration tokens (never used to fit anything): the mean KL divergence of the compiled model's
next-token distribution from the unquantized model's, and how often their most likely tokens
agree (llama.cpp's ``perplexity --kl-divergence`` statistics)."""

from __future__ import annotations

import numpy as np

from edgert.format.model import ModelGraph

#: tokens per forward chunk (the KV cache restarts at every chunk)
CHUNK = 512


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-probabilities (float64) of logits z (..., vocab)."""
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def measure_quality(
    model: ModelGraph, compiled: dict[str, np.ndarray], tokens: list[int]
) -> dict[str, float]:
    """``compiled``: tensor name -> the float weights the artifact computes with (the rest as in
    ``model``). Returns kl (nats per token), top1 (share of tokens whose argmax agrees), the
    perplexity of both on the tokens, and the token count."""
    from edgert.runtime.reference import ReferenceEngine

    ref = ReferenceEngine(model, max_ctx=CHUNK)
    cmp = ReferenceEngine(model, max_ctx=CHUNK)
    cmp.overrides = compiled
    kl, agree, nll_ref, nll_cmp, n = 0.0, 0, 0.0, 0.0, 0
    for i in range(0, len(tokens), CHUNK):
        chunk = tokens[i : i + CHUNK]
        if len(chunk) < 2:
            break
        ref.reset()
        cmp.reset()
        lp = log_softmax(ref.forward(chunk))[:-1]
        lq = log_softmax(cmp.forward(chunk))[:-1]
        nxt = np.asarray(chunk[1:])
        kl += float(np.sum(np.exp(lp) * (lp - lq)))
        agree += int(np.sum(lp.argmax(-1) == lq.argmax(-1)))
        nll_ref -= float(lp[np.arange(len(nxt)), nxt].sum())
        nll_cmp -= float(lq[np.arange(len(nxt)), nxt].sum())
        n += len(nxt)
    if n == 0:
        return {}
    return {
        "kl": kl / n,
        "top1": agree / n,
        "ppl_float": float(np.exp(nll_ref / n)),
        "ppl_compiled": float(np.exp(nll_cmp / n)),
        "tokens": n,
    }
