"""Synthetic GGUFs (tools/make_synthetic_gguf.py) load and run through the reference path."""

import gguf
import numpy as np
import pytest
from edgert.compiler.frontends import load_model
from make_synthetic_gguf import ARCHS, make_synthetic_gguf

from edgert.generate import Sampler, generate
from edgert.reference import ReferenceEngine

EXPECT = {  # arch -> (edgert arch, experts, a tensor only that arch has)
    "llama": ("llama", 0, "blk.0.ffn_gate.weight"),
    "mixtral": ("llama", 4, "blk.1.ffn_down_exps.weight"),
    "qwen2moe": ("qwen2moe", 8, "blk.0.ffn_gate_inp_shexp.weight"),
    "olmoe": ("olmoe", 8, "blk.1.attn_k_norm.weight"),
}


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("arch", ARCHS)
def test_loads_and_generates(tmp_path, arch, qtype):
    path = make_synthetic_gguf(out=tmp_path / "m.gguf", arch=arch, qtype=qtype, progress=False)
    m = load_model(path)
    want_arch, experts, special = EXPECT[arch]
    assert m.config.arch == want_arch and m.config.n_experts == experts
    assert special in m
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == "F32"
    w = m.tensor("blk.0.attn_q.weight")
    assert np.isfinite(w).all() and 0.015 < w.std() < 0.025
    eng = ReferenceEngine(m, max_ctx=64)
    res = generate(
        eng, prompt="the cat sat on", n_predict=6, sampler=Sampler(temp=0), stop_at_eos=False
    )
    assert len(res.tokens) == 6
    if experts:
        assert eng.expert_counts.sum() > 0


def test_deterministic_and_tokenizer_roundtrip(tmp_path):
    a = make_synthetic_gguf(out=tmp_path / "a.gguf", arch="mixtral", seed=3, progress=False)
    b = make_synthetic_gguf(out=tmp_path / "b.gguf", arch="mixtral", seed=3, progress=False)
    assert a.read_bytes() == b.read_bytes()
    tok = load_model(a).tokenizer
    text = "hello world, the 2 cats!"
    assert tok.decode(tok.encode(text)) == text


def test_overrides(tmp_path):
    p = make_synthetic_gguf(
        out=tmp_path / "m.gguf",
        arch="qwen2moe",
        layers=1,
        experts=4,
        top_k=1,
        shared_ffn=64,
        progress=False,
    )
    c = load_model(p).config
    assert (c.n_layers, c.n_experts, c.n_experts_used, c.shared_expert_ffn_dim) == (1, 4, 1, 64)
