import math

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.runtime.perplexity import perplexity

V = 11


class TableEngine:
    """Logits are a fixed function of the current token; records what it was fed."""

    def __init__(self, table):
        self.table = table
        self.fed = []
        self.pos = 0
        self.tokenizer = None

    def reset(self):
        self.pos = 0

    def forward(self, tokens, last_only=False):
        self.fed.append(list(tokens))
        out = np.stack([self.table[t] for t in tokens])
        self.pos += len(tokens)
        return out[-1] if last_only else out


def test_uniform_logits_give_vocab_size():
    eng = TableEngine(np.zeros((V, V), np.float32))
    tokens = list(np.random.default_rng(0).integers(0, V, 300))
    r = perplexity(eng, tokens=tokens, ctx=64)
    assert r.chunks == 300 // 64
    assert r.scored == r.chunks * (64 - 1 - 32)  # llama.cpp: second half, ctx-1-ctx/2 per chunk
    assert r.ppl == pytest.approx(V, rel=1e-9)


def test_scores_only_second_half_and_next_token():
    # a model that always predicts token (t+1) % V with probability p
    p = 0.9
    table = np.full((V, V), math.log((1 - p) / (V - 1)), np.float32)
    for t in range(V):
        table[t, (t + 1) % V] = math.log(p)
    # first half of every chunk is garbage, second half follows the rule
    ctx = 32
    tokens = []
    rng = np.random.default_rng(1)
    for _ in range(3):
        tokens += list(rng.integers(0, V, ctx // 2))
        start = int(rng.integers(0, V))
        tokens += [(start + i) % V for i in range(ctx // 2)]
    r = perplexity(TableEngine(table), tokens=tokens, ctx=ctx)
    assert r.ppl == pytest.approx(1 / p, rel=1e-5)


def test_bos_replaces_first_token_of_each_chunk():
    eng = TableEngine(np.zeros((V, V), np.float32))
    tokens = list(range(1, 9)) * 4
    perplexity(eng, tokens=tokens, ctx=8, bos_id=0)
    assert all(f[0] == 0 for f in eng.fed)
    assert eng.fed[1][1:] == tokens[9:16]


def test_too_short_text_is_refused():
    with pytest.raises(EdgertError, match="at least 128"):
        perplexity(TableEngine(np.zeros((V, V))), tokens=[1] * 100, ctx=64)
