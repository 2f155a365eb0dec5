"""``edgert compile --moefy EXPERTSxTOPK``: a dense FFN split into experts is the same function
when every expert runs, the clusters are balanced and find planted groups, the router's share of
the contribution is reported, and the artifact is a mixture of experts that expert offloading
runs (same tokens under a budget as without), with clear errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SMALL_MODEL, greedy_divergence, greedy_tokens
from edgert.compiler.quant.scheme import QuantScheme
from edgert.compiler.transform.moefy import balanced_kmeans, moefy_model, parse_moefy

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.artifact import Artifact
from edgert.plan.sizes import BUDGET_BATCH
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

PROMPTS = ["the cat sat on", "hello world", "a b c d e"]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    from make_synthetic_gguf import make_synthetic_gguf

    d = tmp_path_factory.mktemp("moefy")
    return make_synthetic_gguf(
        out=d / "m.gguf", arch="llama", qtype="F32", progress=False, layers=3, **SMALL_MODEL
    )


@pytest.fixture(scope="module")
def dense(gguf):
    from edgert.compiler.frontends import load_model

    m = load_model(gguf)
    m.materialize(progress=False)
    return m


@pytest.fixture(scope="module")
def art(gguf, tmp_path_factory):
    from edgert.compiler.compile import compile_model

    out = tmp_path_factory.mktemp("moefy-art") / "m.edgert"
    return compile_model(
        model=gguf, target="host", out=out, scheme=QuantScheme("uniform", 4, 32), moefy=(4, 2)
    ).out


def test_parse_moefy():
    assert parse_moefy("8x2") == (8, 2)
    assert parse_moefy(" 16X4 ", 1536) == (16, 4)
    for bad in ("8", "8x0", "2x3", "1x1", "ax2", "8x2x1"):
        with pytest.raises(EdgertError, match="--moefy"):
            parse_moefy(bad)
    with pytest.raises(EdgertError, match=r"1536 does not split into 7 .* 2, 3, 4, 6, 8"):
        parse_moefy("7x2", 1536)


def test_balanced_kmeans_finds_planted_groups():
    rng = np.random.default_rng(0)
    k, size, dim = 4, 24, 40
    centers = rng.standard_normal((k, dim)) * 3
    truth = rng.permutation(np.repeat(np.arange(k), size))
    x = centers[truth] + rng.standard_normal((k * size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = balanced_kmeans(x, k)
    assert np.bincount(labels, minlength=k).tolist() == [size] * k
    # each found cluster is one planted group (labels are a permutation of the truth)
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == k
    # random rows still split into equal clusters
    noise = rng.standard_normal((60, 8))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert np.bincount(balanced_kmeans(noise, 6), minlength=6).tolist() == [10] * 6


def test_all_experts_equal_the_dense_model(dense):
    c = dense.config
    ids = list(range(3, 3 + 48))
    calib = list(np.random.default_rng(1).integers(3, c.vocab_size, 128))
    want = ReferenceEngine(dense, max_ctx=64).forward(ids)
    for experts in (2, 4, 8):
        m, rec = moefy_model(dense, experts, experts, calib, progress=False)
        mc = m.config
        assert (mc.n_experts, mc.n_experts_used, mc.expert_ffn_dim) == (
            experts, experts, c.ffn_dim // experts,
        )  # fmt: skip
        assert mc.expert_weights_unit and not mc.expert_weights_norm
        assert "blk.0.ffn_up.weight" not in m and "blk.0.ffn_gate_exps.weight" in m
        got = ReferenceEngine(m, max_ctx=64).forward(ids)
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
        # every expert chosen: the whole contribution, for the router and the oracle
        assert rec["router_share"] == pytest.approx([1.0] * c.n_layers, abs=1e-4)
    # a shared expert of half the FFN (behind sigmoid(0), its down doubled) and 2 of 2 routed
    m, rec = moefy_model(dense, 4, 4, calib, shared=2, progress=False)
    mc = m.config
    assert (mc.n_experts, mc.n_experts_used, mc.shared_expert_ffn_dim) == (2, 2, c.ffn_dim // 2)
    assert rec["shared"] == 2 and "blk.0.ffn_down_shexp.weight" in m
    got = ReferenceEngine(m, max_ctx=64).forward(ids)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    with pytest.raises(EdgertError, match="--moefy-shared 4"):
        moefy_model(dense, 4, 4, calib, shared=4, progress=False)
    # fewer experts per token: a different function, shares below 1, oracle >= router
    m, rec = moefy_model(dense, 4, 1, calib, progress=False)
    assert rec["experts"] == 4 and rec["top_k"] == 1 and rec["calib_tokens"] == len(calib)
    r, o = np.array(rec["router_share"]), np.array(rec["oracle_share"])
    assert ((0.25 - 1e-6 <= o) & (o < 1) & (r <= o + 1e-6) & (r > 0)).all()
    assert np.abs(ReferenceEngine(m, max_ctx=64).forward(ids) - want).max() > 1e-2


def test_quantized_source_splits_in_whole_groups(dense, tmp_path):
    """Every expert running, a quantized source's FFN is split in runs of the quantization
    group: each expert's down projection is whole 32-column groups of the dense one (so it is
    not rounded across the source's groups again); a float source, or a routed split, goes
    neuron by neuron."""
    from edgert.compiler.frontends import load_model
    from make_synthetic_gguf import make_synthetic_gguf

    g = make_synthetic_gguf(
        out=tmp_path / "q.gguf", arch="llama", qtype="Q4_1", progress=False, layers=2,
        **SMALL_MODEL,
    )  # fmt: skip
    q = load_model(g)
    q.materialize(progress=False)
    calib = list(np.random.default_rng(2).integers(3, q.config.vocab_size, 128))
    assert moefy_model(q, 4, 2, calib, group=32, progress=False)[1]["neurons_per_unit"] == 1
    m, rec = moefy_model(q, 4, 4, calib, group=32, progress=False)
    assert rec["neurons_per_unit"] == 32
    for i in range(2):
        want = load_model(g).tensor(names.weight(i, "ffn_down"))  # (dim, ffn)
        blocks = {want[:, j : j + 32].tobytes() for j in range(0, want.shape[1], 32)}
        got = m.tensor(names.experts(i, "down"))  # (experts, dim, ffn / experts)
        runs = [got[e][:, j : j + 32].tobytes() for e in range(4) for j in range(0, 64, 32)]
        assert set(runs) == blocks and len(runs) == len(blocks)
    # a float source: neuron by neuron (any split of it is rounded once)
    assert moefy_model(dense, 4, 4, calib, progress=False)[1]["neurons_per_unit"] == 1


def test_artifact_is_a_moe_that_streams_its_experts(art):
    a = Artifact.open(art)
    c = a.config()
    assert c.is_moe and (c.n_experts, c.n_experts_used) == (4, 2) and c.expert_weights_unit
    m = a.manifest["moefy"]
    assert (m["experts"], m["top_k"]) == (4, 2) and len(m["router_share"]) == c.n_layers
    eng = open_artifact_engine(art, max_ctx=64)
    ref = ReferenceEngine(reference_model(a), max_ctx=64)
    want = greedy_tokens(eng, PROMPTS, 16)
    ties = sum(greedy_divergence(ref, ref.tokenizer, p, g, w)
               for p, g, w in zip(PROMPTS, want, greedy_tokens(ref, PROMPTS, 16)))  # fmt: skip
    assert ties <= 1
    from edgert.plan.moe import plan_moe

    p = plan_moe(a, c, max_ctx=64, budget=None, n_batch=BUDGET_BATCH)
    budget = p.minimum + p.expert_bytes  # the minimum and one more expert
    b = open_artifact_engine(art, max_ctx=64, dram_budget=budget)
    assert b.expert_cache is not None and b.dram_plan.streams
    assert greedy_tokens(b, PROMPTS, 16) == want
    assert b.expert_cache.stats.read_bytes > 0


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgert", *args], capture_output=True, text=True, check=False
    )


def test_cli_errors_and_json(gguf, art, tmp_path):
    for extra, msg in (
        (["--moefy", "3x2"], "does not split into 3"),
        (["--moefy", "4"], "cannot read --moefy"),
        (["--moefy", "4x2", "--sparse-ffn"], "streams its experts at run time"),
        (["--moefy", "4x2", "--dram-budget", "100M"], "streams its experts at run time"),
        (["--moefy", "4x2", "--moefy-shared", "2"], "--moefy-shared 2 with --moefy 4x2"),
        (["--moefy-shared", "1"], "--moefy-shared goes with --moefy"),
    ):
        r = _cli("compile", str(gguf), "--target", "host", "-o", str(tmp_path / "x.edgert"), *extra)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "x.edgert").exists()
    # a mixture of experts cannot be split again
    moe = tmp_path / "moe.gguf"
    from make_synthetic_gguf import make_synthetic_gguf

    make_synthetic_gguf(out=moe, arch="mixtral", qtype="F32", progress=False, **SMALL_MODEL)
    r = _cli("compile", str(moe), "--target", "host", "--moefy", "4x2", "-o", str(tmp_path / "y"))
    assert r.returncode == 2 and "already has experts" in r.stderr
    r = _cli("inspect", str(art), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["moefy"]["experts"] == 4


def test_bench_and_inspect_predict_expert_streaming(art):
    """The cost model covers a mixture of experts: inspect and bench predict decode under a
    budget from the expected cache hit rate; bench reports it beside the measured run."""
    from edgert.plan.moe import TRACE_TOKENS, TRACE_WARMUP, plan_moe

    a = Artifact.open(art)
    p = plan_moe(a, a.config(), max_ctx=64, budget=None, n_batch=BUDGET_BATCH)
    budget = str(p.minimum + p.expert_bytes)
    r = _cli("inspect", str(art), "--dram-budget", budget, "--ctx", "64")
    assert r.returncode == 0, r.stderr
    assert "split from dense FFNs (--moefy 4x2)" in r.stdout and "cost model" in r.stdout
    assert "the compiled routing trace replayed" in r.stdout
    r = _cli("bench", str(art), "-p", "4", "-n", "4", "-r", "1", "--dram-budget", budget, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    pred = d["prediction"]
    assert pred["tok_s"] > 0 and pred["flash_bytes_per_token"] > 0
    # with this machine's DRAM read rate measured for the run, not the host target file's
    from edgert.format.target import load_target
    from edgert.plan.cost import DeviceFigures

    host = load_target("host")
    assert pred["dram_gbs"] > 0 and pred["dram_gbs"] != host.dram_bandwidth_gbs
    fig = DeviceFigures.from_target(host, threads=d["threads"]).with_dram(pred["dram_gbs"])
    assert pred["decode_gbs"] == pytest.approx(fig.decode_gbs)
    # from the routing trace the compiler recorded, replayed through the cache
    rep = d["dram"]["replayed"]
    assert rep["steps"] == TRACE_TOKENS - TRACE_WARMUP and 0 <= rep["hit_rate"] <= 1
    assert d["dram"]["expected_hit_rate"] == rep["hit_rate"]
    assert pred["flash_bytes_per_token"] == int(rep["reads_per_token"] * d["dram"]["expert_bytes"])
    # what the tg runs alone did, to hold beside the prediction: top-k lookups per layer and step
    tg, cfg = d["stream_tg"], a.config()
    assert tg["tokens"] == 4 and tg["lookups"] == 4 * cfg.n_layers * cfg.n_experts_used
    assert 0 <= tg["hits"] <= tg["lookups"] and tg["hit_rate"] == tg["hits"] / tg["lookups"]
    assert tg["flash_bytes_per_token"] == tg["read_bytes"] / 4
    # the prediction held to the run: bytes read per token, the replayed trace's against the
    # tg run's (4 tokens here, so within 2x; time is the benchmarks' concern)
    assert 0.5 <= tg["flash_bytes_per_token"] / pred["flash_bytes_per_token"] <= 2


def test_ffn_drop_error_tool_ranks_the_rules():
    """tools/ffn_drop_error.py on an FFN whose neurons each fire on their own share of tokens:
    the per-token rules (|act(gate)|, |h|) drop little, a fixed half much more, every rule's
    error is a fraction of the output, and the refit is measured on tokens it never saw."""
    from ffn_drop_error import layer_errors

    rng = np.random.default_rng(0)
    dim, f, n = 32, 64, 600
    x = rng.standard_normal((n, dim)).astype(np.float32)
    gate = rng.standard_normal((f, dim)).astype(np.float32)
    up = np.repeat(np.eye(dim, dtype=np.float32), f // dim, axis=0)  # h_j = act(g_j) x_(j/2)
    down = rng.standard_normal((dim, f)).astype(np.float32)
    relu = lambda v: np.maximum(v, 0) * 4  # sparse: about half the neurons are 0
    e = layer_errors(x[:400], x[400:], gate, up, down, relu, seed=0)
    assert set(e) == {"gate", "gate_scaled", "true_h", "teal", "fixed", "moefy",
                      "moefy_shared", "refit"}  # fmt: skip
    assert all(0 <= v < 2 for v in e.values())
    assert e["gate"] < 0.05 and e["true_h"] < 0.05  # a ReLU's zeros cost nothing
    assert e["fixed"] > 5 * e["gate"]
