"""The KV cache in fewer bytes (``--kv-cache f16|q8|q4``, keys and values apart): the C forward
pass stores each position's keys and values in the layout of edgert.format.kvcache (checked byte
for byte against the numpy encoder), reads them back in prefill and decode alike, and its logits
follow the reference engine rounding the cache the same way; the DRAM plan counts the smaller
cache."""

import json

import numpy as np
import pytest
from conftest import compile_synthetic, run_cli
from edgert.compiler.quant.scheme import QuantScheme

from edgert.errors import EdgertError
from edgert.format import kvcache
from edgert.format.artifact import Artifact
from edgert.plan.sizes import kv_cache_bytes
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

TOKENS = [1, 17, 33, 240, 5, 99, 402, 7, 61, 300, 12, 8]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A small llama (heads of 32 values: one block per head) at 4 bits."""
    d = tmp_path_factory.mktemp("kv")
    return compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32), layers=2).out


@pytest.fixture(scope="module")
def ref_model(art):
    return reference_model(Artifact.open(art))


@pytest.mark.parametrize("kind", ["f16", "q8", "q4"])
def test_cache_rows_are_the_format(art, kind):
    """Layer 0's keys and values (which no cache rounding before them can change) are stored
    exactly as the numpy encoder writes the float32 engine's rows."""
    base = open_artifact_engine(art, max_ctx=32)
    base.forward(TOKENS)
    eng = open_artifact_engine(art, max_ctx=32, kv_cache=kind)
    eng.forward(TOKENS)
    n = len(TOKENS)
    cfg = eng.cfg
    row = cfg.n_kv_heads * cfg.head_dim
    for f32, got in ((base.native.k_cache, eng.native.k_cache),
                     (base.native.v_cache, eng.native.v_cache)):  # fmt: skip
        x = f32[:n].view(np.float32).reshape(n, row)
        want = kvcache.encode(kind, x)
        assert got.shape[1] == kvcache.row_bytes(kind, row)
        assert np.array_equal(got[:n], want)


def _runs(engine) -> list[np.ndarray]:
    """A prompt of 8 tokens, then 4 more in one call."""
    return [engine.forward(TOKENS[:8]), engine.forward(TOKENS[8:])]


@pytest.mark.parametrize("spec", ["f16", "q8", "q4", "q8,q4", "f16,q8"])
def test_logits_follow_the_reference(art, ref_model, spec):
    """Prefill then more tokens with the cache rounded: the C pass stays as close to the
    reference rounding its cache the same way as it is with float32 caches on both sides (its
    kernels' own error), plus at most what the rounding itself moves (the two sides' keys and
    values differ by the kernels' error, so a few codes round the other way, each moving a
    rotated block); the rounding moves the logits by an amount that grows with fewer bits.
    Values summed without their rotation undone fail it by far, as do queries left unrotated
    against q8 keys."""
    eng = open_artifact_engine(art, max_ctx=32, kv_cache=spec)
    assert eng.native.kv == kvcache.parse(spec) and eng.kv_cache == spec
    got, want = _runs(eng), _runs(ReferenceEngine(ref_model, max_ctx=32, kv_cache=spec))
    base = _runs(open_artifact_engine(art, max_ctx=32))
    exact = _runs(ReferenceEngine(ref_model, max_ctx=32))
    for g, w, b, e in zip(got, want, base, exact):
        scale = np.abs(e).max()
        kernels = np.abs(b - e).max() / scale
        drift = np.abs(w - e).max() / scale  # the cache's rounding alone
        worst = max({"f16": 2e-3, "q8": 2e-2, "q4": 0.2}[t] for t in kvcache.parse(spec))
        assert drift < worst, (spec, drift)
        assert np.abs(g - w).max() / scale < kernels + drift + 1e-3, (spec, kernels, drift)


def test_decode_follows_prefill(art):
    """Token by token or all at once, the q8 cache gives the same logits up to a code step
    (the batched and the single-token kernels round the keys' last bits differently)."""
    a = open_artifact_engine(art, max_ctx=32, kv_cache="q8")
    b = open_artifact_engine(art, max_ctx=32, kv_cache="q8")
    all_at_once = a.forward(TOKENS)
    one = np.stack([b.forward([t])[-1] for t in TOKENS])
    assert np.abs(all_at_once - one).max() < 1e-2 * np.abs(all_at_once).max()


def test_plan_counts_the_cache(art):
    cfg = Artifact.open(art).config()
    f32 = kv_cache_bytes(cfg, 4096)
    assert kv_cache_bytes(cfg, 4096, kv=("f16", "f16")) * 2 == f32
    assert kv_cache_bytes(cfg, 4096, kv=("q8", "q8")) * 128 == f32 * 34
    assert kv_cache_bytes(cfg, 4096, kv=("q8", "q4")) * 128 == f32 * 27


def test_budget_counts_the_smaller_cache(art):
    """A budget too small for float32's cache is refused where float32 is asked for, naming
    --kv-cache; asked for nothing, the plan falls back to the most precise type that fits (f16
    here: the 1 MiB of margin holds it); with q8 the same budget holds the plan."""
    cfg = Artifact.open(art).config()
    fixed = Artifact.open(art).nbytes()  # more than the resident weights and scratch
    budget = fixed + kv_cache_bytes(cfg, 2048, 16, ("q8", "q8")) + (1 << 20)
    assert kv_cache_bytes(cfg, 2048, 16) > budget
    with pytest.raises(EdgertError, match="--kv-cache"):
        open_artifact_engine(art, max_ctx=2048, dram_budget=budget, kv_cache="f32")
    assert open_artifact_engine(art, max_ctx=2048, dram_budget=budget).native.kv == ("f16", "f16")
    eng = open_artifact_engine(art, max_ctx=2048, dram_budget=budget, kv_cache="q8")
    assert eng.native.kv == ("q8", "q8")
    assert eng.dram_plan.kv == kv_cache_bytes(cfg, 2048, eng.dram_plan.batch, ("q8", "q8"))
    assert eng.native.k_cache.nbytes + eng.native.v_cache.nbytes == eng.dram_plan.kv


def test_bad_types_refused(art, tmp_path):
    with pytest.raises(EdgertError, match="not a cache type"):
        open_artifact_engine(art, max_ctx=32, kv_cache="q3")
    r = run_cli("generate", str(art), "-p", "hi", "-n", "2", "--kv-cache", "q8,q5")
    assert r.returncode == 2 and "not a cache type" in r.stderr and "Traceback" not in r.stderr


def test_cli_generate_and_perplexity(art, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log " * 20)
    r = run_cli("generate", str(art), "-p", "the cat", "-n", "4", "--kv-cache", "q8",
                "--temp", "0", "--ignore-eos", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kv_cache"] == "q8" and len(out["tokens"]) == 4
    ppl = {}
    for spec in ("f32", "q8"):
        r = run_cli("perplexity", str(art), "-f", str(text), "-c", "64", "--kv-cache", spec,
                    "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["kv_cache"] == spec
        ppl[spec] = res["ppl"]
    assert abs(ppl["q8"] / ppl["f32"] - 1) < 0.02, ppl
