"""The TVM lowering (float32 weights) computes what the reference forward computes, for every
architecture, through prefill and incremental decode with the KV cache."""

import numpy as np
import pytest
from edgert.compiler.lower.relax import build_module, compile_module, f32_linears
from test_reference_archs import CONFIGS, random_model

from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.engine import CompiledEngine, ModelGraphSource

LOGIT_TOL = 1e-4  # max abs, float32 on both sides, different summation order


@pytest.fixture(scope="module", params=list(CONFIGS))
def compiled(request, tmp_path_factory):
    cfg = CONFIGS[request.param]
    m = random_model(cfg, seed=7)
    so = tmp_path_factory.mktemp(request.param) / "model.so"
    compile_module(build_module(cfg, {"f32": f32_linears(cfg)}), {"kind": "llvm"}, out_so=str(so))
    return m, so


def test_prefill_and_decode_match_reference(compiled):
    m, so = compiled
    eng = CompiledEngine(
        str(so), m.config, ModelGraphSource(m), max_ctx=32, head_name="token_embd.weight"
    )
    ref = ReferenceEngine(m, max_ctx=32)
    tokens = [3, 17, 42, 8, 8, 0, 49, 21, 5]
    got = [eng.forward(tokens[:5])] + [eng.forward([t]) for t in tokens[5:]]
    want = [ref.forward(tokens[:5])] + [ref.forward([t]) for t in tokens[5:]]
    for g, w in zip(got, want):
        assert np.max(np.abs(g - w)) < LOGIT_TOL
    if m.config.n_experts:
        assert np.array_equal(eng.expert_counts, ref.expert_counts)
    eng.reset()
    assert np.max(np.abs(eng.forward(tokens[:3], last_only=True) - want[0][2])) < LOGIT_TOL
