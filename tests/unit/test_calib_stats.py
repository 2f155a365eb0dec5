"""Calibration: the statistics every linear layer's quantizer sees are its inputs' second
moments; the reference engine's batched sequences equal separate runs; the model's own
calibration text is cached by content and reused."""

import numpy as np
import pytest
from test_reference_archs import CONFIGS, random_model

from edgert.compiler.quant.calib import collect_stats
from edgert.compiler.transform import calibrate
from edgert.compiler.transform.calibrate import calibration_tokens, ffn_inputs
from edgert.format import names
from edgert.runtime.reference import ReferenceEngine


@pytest.mark.parametrize("name", ["llama", "qwen3moe", "gemma3"])
def test_stats_are_the_inputs_second_moments(name):
    m = random_model(CONFIGS[name], seed=4)
    tokens = [3 + (7 * i) % 45 for i in range(57)]
    st = collect_stats(m, tokens)
    assert st.tokens == len(tokens)
    c = m.config
    xs = ffn_inputs(m, tokens)
    for i in range(c.n_layers):
        q, k, v = (st.hessian(names.weight(i, p)) for p in ("attn_q", "attn_k", "attn_v"))
        assert q is k is v or (np.array_equal(q, k) and np.array_equal(q, v))
        assert q.shape == (c.dim, c.dim) and np.allclose(q, q.T)
        assert np.linalg.eigvalsh(q.astype(np.float64)).min() > -1e-4 * np.abs(q).max()
        want = xs[i].T.astype(np.float64) @ xs[i] / len(tokens)
        if c.is_moe:  # experts' gate and up read the layer's FFN input
            got = st.hessian(names.experts(i, "gate"), expert=0)
            assert st.hessian(names.experts(i, "down"), expert=0) is None
        else:
            got = st.hessian(names.weight(i, "ffn_gate"))
            np.testing.assert_array_equal(got, st.hessian(names.weight(i, "ffn_up")))
            assert st.hessian(names.weight(i, "ffn_down")).shape == (c.ffn_dim, c.ffn_dim)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    head = names.OUTPUT if names.OUTPUT in m else names.EMBEDDING
    assert st.hessian(head).shape == (c.dim, c.dim)
    assert st.hessian(names.router(0)) is None  # routers stay float


@pytest.mark.parametrize("name", ["llama", "gemma3", "mixtral"])
def test_batched_sequences_equal_separate_runs(name):
    m = random_model(CONFIGS[name], seed=5)
    seqs = [[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 6, 2], [2, 9, 3, 3, 5, 1]]
    batch = ReferenceEngine(m, max_ctx=8, batch=3)
    got = np.stack([batch.forward([s[t] for s in seqs]) for t in range(6)], 1)
    for b, s in enumerate(seqs):
        want = ReferenceEngine(m, max_ctx=8).forward(s)
        np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=2e-4)
    with pytest.raises(Exception, match="one token each"):
        batch.forward([1, 2])


def test_self_written_calibration_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERT_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "SELF_SEQ", 16)
    m = random_model(CONFIGS["llama"], seed=6)
    ids = calibration_tokens(m, n_tokens=40, seed=3)
    assert len(ids) == 40 and all(0 <= t < m.config.vocab_size for t in ids)
    # three sequences of 14 written side by side, each from the start token
    assert ids[0] == ids[14] == ids[28]
    assert len(list((tmp_path / "calib").glob("*.json"))) == 1

    def refuse(*a, **k):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(ReferenceEngine, "forward", refuse)
    assert calibration_tokens(m, n_tokens=40, seed=3) == ids
