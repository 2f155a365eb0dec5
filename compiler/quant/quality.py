"""How much of the model the compiled weights keep, measured at compile time on held-back
calibration tokens (never used to fit anything): the mean KL divergence of the compiled model's
next-token distribution from the unquantized model's, and how often their most likely tokens
agree (llama.cpp's ``perplexity --kl-divergence`` statistics)."""

from __future__ import annotations

import numpy as np

from edgert.format.model import ModelGraph

#: tokens per forward chunk (the KV cache restarts at every chunk)
CHUNK = 512
#: rows of the output head (vocabulary entries) read at a time: a 151 936-entry head is 1.2 GB
#: in float32, which neither side holds whole (ModelGraph.part); the softmax statistics are
#: accumulated slice by slice
VOCAB = 8192


class _Softmax:
    """Running statistics of the softmax over vocabulary slices, per row: the largest logit,
    the sum of exp(z - max), its argmax, and (for the reference side) sum exp(zp - max)(zp - zq)."""

    def __init__(self, n: int):
        self.max = np.full(n, -np.inf)
        self.sum = np.zeros(n)
        self.cross = np.zeros(n)
        self.arg = np.zeros(n, np.int64)
        self.at = np.zeros(n)  # the logit of the next token

    def add(self, z: np.ndarray, v0: int, nxt: np.ndarray, other: np.ndarray | None = None):
        top = z.max(-1)
        new = np.maximum(self.max, top)
        keep = np.exp(self.max - new)
        e = np.exp(z - new[:, None])
        self.sum = self.sum * keep + e.sum(-1)
        if other is not None:
            self.cross = self.cross * keep + (e * (z - other)).sum(-1)
        self.arg = np.where(top > self.max, v0 + z.argmax(-1), self.arg)  # the first of ties
        self.max = new
        inside = (nxt >= v0) & (nxt < v0 + z.shape[1])
        self.at[inside] = z[inside, nxt[inside] - v0]

    def log_norm(self) -> np.ndarray:
        return self.max + np.log(self.sum)


def measure_quality(model: ModelGraph, compiled: ModelGraph, tokens: list[int]) -> dict[str, float]:
    """``compiled``: the weights the artifact computes with, in float32
    (edgert.runtime.weights.reference_model). Returns kl (nats per token), top1 (share of tokens
    whose argmax agrees), the perplexity of both on the tokens, and the token count."""
    from edgert.runtime.reference import ReferenceEngine

    ref = ReferenceEngine(model, max_ctx=CHUNK)
    cmp = ReferenceEngine(compiled, max_ctx=CHUNK)
    vocab = model.config.vocab_size
    kl, agree, nll_ref, nll_cmp, n = 0.0, 0, 0.0, 0.0, 0
    for i in range(0, len(tokens), CHUNK):
        chunk = tokens[i : i + CHUNK]
        if len(chunk) < 2:
            break
        ref.reset()
        cmp.reset()
        hp, hq = ref.hidden(chunk)[:-1], cmp.hidden(chunk)[:-1]
        nxt = np.asarray(chunk[1:])
        p, q = _Softmax(len(nxt)), _Softmax(len(nxt))
        for v0 in range(0, vocab, VOCAB):
            rows = slice(v0, min(vocab, v0 + VOCAB))
            zp = (hp @ ref.head_rows(rows).T).astype(np.float64)
            zq = (hq @ cmp.head_rows(rows).T).astype(np.float64)
            p.add(zp, v0, nxt, zq)
            q.add(zq, v0, nxt)
        lp, lq = p.log_norm(), q.log_norm()
        # KL(p || q) = sum_i p_i (zp_i - zq_i) - (log Zp - log Zq)
        kl += float(np.sum(p.cross / p.sum - lp + lq))
        agree += int(np.sum(p.arg == q.arg))
        nll_ref -= float(np.sum(p.at - lp))
        nll_cmp -= float(np.sum(q.at - lq))
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
