"""Every architecture through the compiled path's mechanisms, on small synthetic models: the
4-bit artifact's greedy tokens are the reference's on its own weights; a dense model streams its
layers under the smallest --dram-budget, runs its FFN on neuron bundles (--sparse-ffn; every
neuron kept, the bundles' FFN is the reference's on the bundles' weights) and splits into
experts (--moefy); a mixture streams its experts through the expert cache."""

import numpy as np
import pytest
from conftest import (
    PREFILL_TOL,
    SMALL_MODEL,
    bundle_weights,
    greedy_divergence,
    greedy_tokens,
    sparse_reference,
)
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format.artifact import Artifact
from edgert.plan.dram import plan_dram
from edgert.plan.moe import plan_moe
from edgert.plan.sizes import BUDGET_BATCH
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

DENSE = ("llama3", "qwen2", "qwen3", "gemma3", "phi3", "smollm3")
MOE = ("qwen3moe",)
LAYERS = {"gemma3": 6, "smollm3": 4}
PROMPTS = ["the cat sat on", "hello world"]
N = 12
SCHEME = QuantScheme("uniform", 4, 32)
BUNDLE_TOL = PREFILL_TOL  # |bundle FFN path - reference| / max |reference|


def build(tmp_path, arch, **kw):
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    g = make_synthetic_gguf(out=tmp_path / f"{arch}.gguf", arch=arch, qtype="F32", progress=False,
                            layers=LAYERS.get(arch, 3), **SMALL_MODEL)  # fmt: skip
    tag = "-".join(sorted(kw)) or "plain"
    return compile_model(model=g, target="host", out=tmp_path / f"{arch}-{tag}.edgert",
                         scheme=SCHEME, **kw).out  # fmt: skip


def assert_reference_tokens(art, got):
    a = Artifact.open(art)
    ref = ReferenceEngine(reference_model(a), max_ctx=64)
    want = greedy_tokens(ref, PROMPTS, N)
    ties = sum(greedy_divergence(ref, ref.tokenizer, p, g, w)
               for p, g, w in zip(PROMPTS, got, want))  # fmt: skip
    assert ties <= 1


@pytest.mark.parametrize("arch", DENSE)
def test_dense_streams_sparsifies_and_moefies(tmp_path, arch):
    art = build(tmp_path, arch, sparse_ffn=True)
    a = Artifact.open(art)
    c = a.config()
    eng = open_artifact_engine(art, max_ctx=64)
    want = greedy_tokens(eng, PROMPTS, N)
    assert_reference_tokens(art, want)
    # layer streaming at the smallest budget: the same tokens
    low = plan_dram(a, c, max_ctx=64, budget=None, n_batch=BUDGET_BATCH).minimum
    s = open_artifact_engine(art, max_ctx=64, dram_budget=low)
    assert s.streamer is not None and s.dram_plan.streamed
    assert greedy_tokens(s, PROMPTS, N) == want
    # the FFN on neuron bundles, every neuron kept: the reference on the bundles' weights
    sp = open_artifact_engine(art, max_ctx=64, ffn={"sparsity": 0.5})
    for cfg in sp.native._sparse:
        cfg.threshold = -1.0
    ref = sparse_reference(reference_model(a), [-1.0] * c.n_layers, bundle_weights(a), max_ctx=64)
    toks = sp.tokenizer.encode(PROMPTS[0])
    got, exp = sp.forward(toks), ref.forward(toks)
    # the LUT kernels' activation tables: 1.1e-3 of the largest logit on gemma3's six layers
    bound = BUNDLE_TOL * np.abs(exp).max()
    assert np.abs(got - exp).max() <= bound
    # the same most likely token at every position, but where the reference's top two are
    # closer than the errors allowed (both within 2 x bound of each other)
    rows = np.nonzero(got.argmax(-1) != exp.argmax(-1))[0]
    for i in rows:
        assert exp[i].max() - exp[i, got[i].argmax()] <= 2 * bound, i
    # at a real threshold fewer neurons are read, and tokens still come
    sp2 = open_artifact_engine(art, max_ctx=64, ffn={"sparsity": 0.5})
    assert len(greedy_tokens(sp2, PROMPTS[:1], 4)[0]) == 4
    assert 0 < sp2.stream_stats.active_fraction < 1
    # moefy: the artifact is a mixture (4 experts, 2 per token) computed as the reference does
    m = build(tmp_path, arch, moefy=(4, 2))
    mc = Artifact.open(m).config()
    assert mc.is_moe and mc.arch == c.arch and mc.activation == c.activation
    assert_reference_tokens(m, greedy_tokens(open_artifact_engine(m, max_ctx=64), PROMPTS, N))


@pytest.mark.parametrize("arch", MOE)
def test_moe_streams_its_experts(tmp_path, arch):
    art = build(tmp_path, arch)
    a = Artifact.open(art)
    eng = open_artifact_engine(art, max_ctx=64)
    want = greedy_tokens(eng, PROMPTS, N)
    assert_reference_tokens(art, want)
    p = plan_moe(a, a.config(), max_ctx=64, budget=None, n_batch=BUDGET_BATCH)
    b = open_artifact_engine(art, max_ctx=64, dram_budget=p.minimum + p.expert_bytes)
    assert b.expert_cache is not None and b.dram_plan.streams
    assert greedy_tokens(b, PROMPTS, N) == want
    assert b.expert_cache.stats.read_bytes > 0
