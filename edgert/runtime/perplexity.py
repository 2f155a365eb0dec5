"""Perplexity with llama.cpp's convention, so figures compare directly with `llama-perplexity`.

The text is tokenized once (with BOS if the model adds one) and cut into non-overlapping chunks of
``ctx`` tokens; each chunk is evaluated from an empty cache (its first token replaced by BOS when
the model uses one) and only the second half is scored: positions ctx/2 .. ctx-2 predict the
next token, ``ctx - 1 - ctx/2`` scored tokens per chunk.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from edgert.errors import EdgertError


@dataclass
class PerplexityResult:
    ppl: float
    scored: int
    chunks: int
    ctx: int
    nll: float  # mean negative log-likelihood
    chunk_ppl: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity(
    engine,
    *,
    tokens: list[int],
    ctx: int = 512,
    bos_id: int | None = None,
    max_chunks: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``tokens`` (already tokenized) in chunks of ``ctx``."""
    if ctx < 4:
        raise EdgertError(f"--ctx {ctx} is too small", "use at least 4 (llama.cpp uses 512)")
    n_chunks = len(tokens) // ctx
    if len(tokens) < 2 * ctx:
        raise EdgertError(
            f"the text has {len(tokens)} tokens; at least {2 * ctx} are needed with --ctx {ctx}",
            "pass a longer text or a smaller --ctx",
        )
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    first = ctx // 2
    nll_sum, scored, chunk_ppl = 0.0, 0, []
    for c in range(n_chunks):
        chunk = list(tokens[c * ctx : (c + 1) * ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        engine.reset()
        logits = engine.forward(chunk)  # (ctx, vocab)
        lp = log_softmax(logits[first : ctx - 1])
        targets = np.asarray(chunk[first + 1 : ctx])
        nll = -lp[np.arange(len(targets)), targets]
        nll_sum += float(nll.sum())
        scored += len(targets)
        chunk_ppl.append(float(math.exp(nll.mean())))
        if on_chunk:
            on_chunk(c + 1, n_chunks, math.exp(nll_sum / scored))
    mean = nll_sum / scored
    return PerplexityResult(
        ppl=math.exp(mean), scored=scored, chunks=n_chunks, ctx=ctx, nll=mean, chunk_ppl=chunk_ppl
    )
