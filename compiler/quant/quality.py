"""How much of the model the compiled weights keep, measured at compile time on held-back
calibration tokens (never used to fit anything): the mean KL divergence of the compiled model's
next-token distribution from the unquantized model's, and how often their most likely tokens
agree (llama.cpp's ``perplexity --kl-divergence`` statistics)."""

from __future__ import annotations

import numpy as np

from edgert.format.model import ModelGraph

#: tokens per forward chunk (the KV cache restarts at every chunk)
CHUNK = 512
#: rows of logits compared at a time
ROWS = 64


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-probabilities (float64) of logits z (..., vocab)."""
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def measure_quality(model: ModelGraph, compiled: ModelGraph, tokens: list[int]) -> dict[str, float]:
    """``compiled``: the weights the artifact computes with, in float32
    (edgert.runtime.weights.reference_model). Returns kl (nats per token), top1 (share of tokens whose argmax agrees), the
    perplexity of both on the tokens, and the token count."""
    from edgert.runtime.reference import ReferenceEngine

    ref = ReferenceEngine(model, max_ctx=CHUNK)
    cmp = ReferenceEngine(compiled, max_ctx=CHUNK)
    kl, agree, nll_ref, nll_cmp, n = 0.0, 0, 0.0, 0.0, 0
    for i in range(0, len(tokens), CHUNK):
        chunk = tokens[i : i + CHUNK]
        if len(chunk) < 2:
            break
        ref.reset()
        cmp.reset()
        hp, hq = ref.hidden(chunk)[:-1], cmp.hidden(chunk)[:-1]
        nxt = np.asarray(chunk[1:])
        for r in range(0, len(nxt), ROWS):  # a few rows of logits at a time (vocab is large)
            lp = log_softmax(ref.logits(hp[r : r + ROWS]))
            lq = log_softmax(cmp.logits(hq[r : r + ROWS]))
            at = (np.arange(len(lp)), nxt[r : r + ROWS])
            kl += float(np.sum(np.exp(lp) * (lp - lq)))
            agree += int(np.sum(lp.argmax(-1) == lq.argmax(-1)))
            nll_ref -= float(lp[at].sum())
            nll_cmp -= float(lq[at].sum())
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
