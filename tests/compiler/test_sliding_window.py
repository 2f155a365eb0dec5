"""Sliding-window attention (Gemma 3: five of every six layers see the last `window` positions)
through the compiled path: each sliding layer's KV cache is a ring of its window and one call's
tokens, the DRAM plan counts exactly that, the ring wraps without changing a logit, and a run at
4k context under --dram-budget stays within the budget."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXED_OVERHEAD, PREFILL_TOL, SMALL_MODEL
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format.artifact import Artifact
from edgert.plan.dram import plan_dram
from edgert.plan.sizes import BUDGET_BATCH, MAX_BATCH, kv_cache_bytes
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

CTX = 4096
WINDOW = 32
LAYERS = 6  # layers 0-4 slide, layer 5 is global


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    d = tmp_path_factory.mktemp("swa")
    shape = {**SMALL_MODEL, "layers": LAYERS, "ctx": CTX, "window": WINDOW}
    g = make_synthetic_gguf(out=d / "g.gguf", arch="gemma3", qtype="F32", progress=False, **shape)
    return compile_model(
        model=g, target="host", out=d / "g.edgert", scheme=QuantScheme("uniform", 4, 32)
    ).out


def test_plan_counts_window_sized_caches(art):
    a = Artifact.open(art)
    cfg = a.config()
    assert cfg.swa_layers == [0, 1, 2, 3, 4] and cfg.sliding_window == WINDOW
    row = 2 * cfg.n_kv_heads * cfg.head_dim * 4  # K and V, float32
    full = row * CTX * LAYERS
    for batch, budget in ((MAX_BATCH, None), (BUDGET_BATCH, 1 << 40)):
        want = row * (5 * (WINDOW + batch - 1) + CTX)
        p = plan_dram(a, cfg, max_ctx=CTX, budget=budget, n_batch=batch)
        assert p.kv == kv_cache_bytes(cfg, CTX, batch) == want
    assert want < full / 5  # under a budget 5 of 6 layers hold 95 of 4096 positions
    eng = open_artifact_engine(art, max_ctx=CTX, dram_budget=1 << 40)
    assert eng.batch == BUDGET_BATCH
    assert eng.native.k_cache.nbytes + eng.native.v_cache.nbytes == eng.dram_plan.kv


def test_ring_wraps_with_the_reference_logits(art):
    """200 positions in calls of at most 64 tokens: the sliding layers' rings (95 rows) wrap;
    every logit stays the reference's on the artifact's own weights."""
    toks = [int(t) for t in np.random.default_rng(0).integers(0, 500, 200)]
    eng = open_artifact_engine(art, max_ctx=256, dram_budget=1 << 40)
    assert eng.native.k_cache.shape[0] == 5 * (WINDOW + BUDGET_BATCH - 1) + 256
    got = np.concatenate([eng.forward(toks[:150]), eng.forward(toks[150:151]),
                          eng.forward(toks[151:])])  # fmt: skip
    want = ReferenceEngine(reference_model(Artifact.open(art)), max_ctx=256).forward(toks)
    assert np.max(np.abs(got - want)) <= PREFILL_TOL * np.max(np.abs(want))
    # random tokens on random weights: near ties everywhere (97.5% with the int8 prefill path)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95


def test_ring_of_q4_key_groups_wraps(art):
    """q4 keys go by groups of 64 positions: a sliding layer's ring holds whole groups, one more
    than its window and a call's tokens span (192 rows at 64 tokens per call), and 400 positions
    wrap it twice without a logit leaving the reference that reads the same groups quantized
    (values in float16, to see the keys alone; bounds as in test_kv_cache)."""
    toks = [int(t) for t in np.random.default_rng(2).integers(0, 500, 400)]
    spec = "q4,f16"
    ring = 64 * (-(-(WINDOW + BUDGET_BATCH - 1) // 64) + 1)
    eng = open_artifact_engine(art, max_ctx=512, dram_budget=1 << 40, kv_cache=spec)
    assert eng.native.k_cache.shape[0] == 5 * ring + 512 and ring == 192
    assert eng.dram_plan.kv == kv_cache_bytes(eng.cfg, 512, BUDGET_BATCH, ("q4", "f16"))
    assert eng.native.k_cache.nbytes + eng.native.v_cache.nbytes + eng.native.k_tail.nbytes == (
        eng.dram_plan.kv
    )

    def run(e):
        return np.concatenate([e.forward(toks[:150]), e.forward(toks[150:151]),
                               e.forward(toks[151:300]), e.forward(toks[300:])])  # fmt: skip

    ref = reference_model(Artifact.open(art))
    got, base = run(eng), run(open_artifact_engine(art, max_ctx=512, dram_budget=1 << 40))
    want = ReferenceEngine(ref, max_ctx=512, kv_cache=spec).forward(toks)
    exact = ReferenceEngine(ref, max_ctx=512).forward(toks)
    scale = np.abs(exact).max()
    kernels = np.abs(base - exact).max() / scale
    drift = np.abs(want - exact).max() / scale
    assert 1e-4 < drift < 0.2, drift
    assert np.abs(got - want).max() / scale < kernels + drift + 1e-3, (kernels, drift)


RUN = """
import json, sys
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
from edgert.measure.bench import peak_rss_bytes, rss_bytes
path, budget, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import tokenizers, edgert.runtime.engine  # the runtime's own footprint: the baseline
base = rss_bytes()
eng = open_artifact_engine(path, max_ctx=4096, dram_budget=budget)
r = generate(eng, prompt="the cat " * 200, n_predict=n, sampler=Sampler(temp=0),
             stop_at_eos=False)
print(json.dumps({"base": base, "peak": peak_rss_bytes(), "tokens": len(r.tokens),
                  "pos": eng.pos, "planned": eng.dram_plan.planned, "kv": eng.dram_plan.kv}))
"""


def test_4k_context_run_within_budget(art):
    a = Artifact.open(art)
    p = plan_dram(a, a.config(), max_ctx=CTX, budget=None, n_batch=BUDGET_BATCH)
    budget = p.minimum + (p.fixed + sum(p.layer_bytes) - p.minimum) // 2
    r = subprocess.run([sys.executable, "-c", RUN, str(art), str(budget), "256"],
                       capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    print("swa run", d)
    assert d["tokens"] == 256 and d["pos"] > 600  # past every ring's size
    assert d["planned"] <= budget and d["kv"] == kv_cache_bytes(a.config(), CTX, BUDGET_BATCH)
    assert d["peak"] <= d["base"] + budget + FIXED_OVERHEAD, d
