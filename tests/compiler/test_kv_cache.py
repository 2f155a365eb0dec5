"""The KV cache in fewer bytes (``--kv-cache f16|q8|q4``, keys and values apart): the C forward
pass stores each position's keys and values in the layout of edgert.format.kvcache (checked byte
for byte against the numpy encoder; q4 keys by groups of positions), reads them back in prefill
and decode alike, and its logits follow the reference engine rounding the cache the same way; the
DRAM plan counts the smaller cache."""

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
    exactly as the numpy encoder writes the float32 engine's rows (q4: values; its keys go by
    groups, the next test)."""
    base = open_artifact_engine(art, max_ctx=32)
    base.forward(TOKENS)
    eng = open_artifact_engine(art, max_ctx=32, kv_cache=kind)
    eng.forward(TOKENS)
    n = len(TOKENS)
    cfg = eng.cfg
    row = cfg.n_kv_heads * cfg.head_dim
    pairs = [(base.native.v_cache, eng.native.v_cache)]
    if kind != "q4":
        pairs.append((base.native.k_cache, eng.native.k_cache))
    for f32, got in pairs:
        x = f32[:n].view(np.float32).reshape(n, row)
        want = kvcache.encode(kind, x)
        assert got.shape[1] == kvcache.row_bytes(kind, row)
        assert np.array_equal(got[:n], want)


#: 150 positions in calls that end inside a group, across a group's end, and on one
CALLS = (60, 10, 58, 1, 1, 20)
LONG = [int(t) for t in np.random.default_rng(1).integers(1, 400, sum(CALLS))]


def _calls(engine, calls=CALLS) -> np.ndarray:
    out, t = [], 0
    for n in calls:
        out.append(engine.forward(LONG[t : t + n]))
        t += n
    return np.concatenate(out)


def test_q4_keys_are_stored_by_group(art):
    """q4 keys: layer 0's complete groups (positions 0-127) are the numpy encoder's groups of the
    float32 engine's keys, in the rows of their positions; the 22 positions after them sit in
    the layer's tail in float16, at row position % group."""
    base = open_artifact_engine(art, max_ctx=160)
    _calls(base)
    eng = open_artifact_engine(art, max_ctx=160, kv_cache="q4")
    _calls(eng)
    cfg, g = eng.cfg, kvcache.KEY_GROUP
    row = cfg.n_kv_heads * cfg.head_dim
    assert eng.native.k_cache.shape[1] == kvcache.key_row_bytes("q4", row) == row * 9 // 16
    keys = base.native.k_cache[:150].view(np.float32).reshape(150, cfg.n_kv_heads, cfg.head_dim)
    for g0 in (0, g):
        want = kvcache.encode_key_group(keys[g0 : g0 + g]).reshape(-1)
        assert np.array_equal(eng.native.k_cache[g0 : g0 + g].reshape(-1), want), g0
    tail = eng.native.k_tail[0].view(np.float16).reshape(g, row)
    assert np.array_equal(tail[: 150 - 2 * g], keys[2 * g :].reshape(-1, row).astype(np.float16))


def test_q4_keys_follow_the_reference(art, ref_model):
    """q4 keys (values float16, to see the keys alone): until a group is complete every query
    reads float16 keys, so positions 0-62 are the float16 cache's logits bit for bit, even those
    in the call that completes the group (60-69) before position 63; from there on the C pass
    follows the reference reading complete groups quantized (within the kernels' own error and
    what the rounding moves); and the keys are the same whatever the calls: all 150 tokens at
    once or one at a time give the calls' logits up to the kernels' rounding."""
    spec, g = "q4,f16", kvcache.KEY_GROUP
    got = _calls(open_artifact_engine(art, max_ctx=160, kv_cache=spec))
    f16 = _calls(open_artifact_engine(art, max_ctx=160, kv_cache="f16"))
    assert np.array_equal(got[: g - 1], f16[: g - 1])
    assert not np.array_equal(got[g - 1], f16[g - 1])  # position 63 reads group 0 quantized
    want = _calls(ReferenceEngine(ref_model, max_ctx=160, kv_cache=spec))
    base = _calls(open_artifact_engine(art, max_ctx=160))
    exact = _calls(ReferenceEngine(ref_model, max_ctx=160))
    scale = np.abs(exact).max()
    kernels = np.abs(base - exact).max() / scale
    drift = np.abs(want - exact).max() / scale
    assert 1e-4 < drift < 0.2, drift  # the groups' rounding moves the logits, within bounds
    assert np.abs(got - want).max() / scale < kernels + drift + 1e-3, (kernels, drift)
    at_once = _calls(open_artifact_engine(art, max_ctx=160, kv_cache=spec), (len(LONG),))
    one_by_one = _calls(open_artifact_engine(art, max_ctx=160, kv_cache=spec), (1,) * len(LONG))
    for other in (at_once, one_by_one):
        assert np.abs(other - got).max() < 1e-2 * np.abs(got).max()


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
    # q4 keys: 36 bytes per 64 values, and each layer's tail of 64 float16 rows
    row = cfg.n_kv_heads * cfg.head_dim
    tail = cfg.n_layers * 64 * row * 2
    assert (kv_cache_bytes(cfg, 4096, kv=("q4", "q8")) - tail) * 128 == f32 * (9 + 17)


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
