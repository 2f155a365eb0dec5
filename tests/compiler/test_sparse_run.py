"""FFN sparsity over neuron bundles (compile --sparse-ffn, run --sparsity): the bundle format
round-trips, the C kernel equals numpy, the sparse forward pass equals a numpy forward that drops
the same neurons, the window cache's size never changes tokens, and corrupt or missing bundles
end in clear errors."""

import ctypes
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import SMALL_MODEL, bundle_weights, greedy_tokens, run_cli, sparse_reference
from edgert.compiler.quant.lut import quantize_uniform
from edgert.compiler.quant.scheme import QuantScheme
from edgert.compiler.transform.sparsify import SPARSITIES

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.artifact import Artifact, ArtifactError
from edgert.format.bundles import BundleFormat, SparseSpec, pack_bundles, unpack_bundles
from edgert.plan.moe import TRACE_TOKENS, TRACE_WARMUP
from edgert.plan.sparse import plan_sparse
from edgert.runtime.build import build_shared
from edgert.runtime.forward import _Sparse
from edgert.runtime.open import open_artifact_engine, sparse_plan
from edgert.runtime.reference import silu
from edgert.runtime.weights import reference_model

PROMPTS = ["the cat sat on", "hello world", "a b c d e"]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    d = tmp_path_factory.mktemp("sparse")
    g = make_synthetic_gguf(
        out=d / "m.gguf", arch="llama", qtype="F32", progress=False, layers=4, **SMALL_MODEL
    )
    return compile_model(
        model=g,
        target="host",
        out=d / "m.edgert",
        scheme=QuantScheme("uniform", 4, 32),
        sparse_ffn=True,
    ).out


def tokens(engine, n=24):
    return greedy_tokens(engine, PROMPTS, n)


def _ffn(rng, dim, f, bits):
    """A random FFN's up (f, dim) and down (dim, f) quantized to uniform ``bits`` in groups of
    32 (as the artifact's own weights) and their dequantized floats."""
    up = quantize_uniform(rng.standard_normal((f, dim)), bits=bits, group_size=32)
    down = quantize_uniform(rng.standard_normal((dim, f)), bits=bits, group_size=32)
    return up.affine(), down.affine(), up.dequantize(), down.dequantize()


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6])
def test_bundles_hold_the_compiled_weights_exactly(bits):
    """Bundles are cut from the quantized projections: what they hold equals them bit for bit
    (no second rounding), at every width the quantizers and imports give."""
    rng = np.random.default_rng(bits)
    dim, f = 72, 40  # dim not a multiple of the group
    up, down, u0, d0 = _ffn(rng, dim, f, bits)
    fmt = BundleFormat.for_bits(dim, bits, 32, 32)
    order = rng.permutation(f)
    b, ds, dz = pack_bundles(up, down, fmt, order)
    assert b.shape == (f, fmt.nbytes) and b.dtype == np.uint8
    assert ds.shape == dz.shape == (fmt.down_groups(f), dim)
    u, d = unpack_bundles(b, fmt, order, ds, dz)
    np.testing.assert_array_equal(u, u0)
    np.testing.assert_array_equal(d, d0)
    # bundle p is neuron order[p]: its up row's codes first
    assert (
        b[3, : fmt.code_bytes]
        == pack_bundles(up, down, fmt, np.arange(f))[0][order[3], : fmt.code_bytes]
    ).all()
    with pytest.raises(ValueError, match="match"):
        pack_bundles(up, down, BundleFormat.for_bits(dim, bits, 32, 64), order)


@pytest.mark.parametrize("n", [1, 5])
def test_bundle_ffn_kernel_equals_numpy(n):
    lib = ctypes.CDLL(str(build_shared()))
    fn = lib.edgert_bundle_ffn
    rng = np.random.default_rng(n)
    dim, f, bits = 100, 64, 4
    fmt = BundleFormat(dim, bits, 32, 32)
    up, down, _, _ = _ffn(rng, dim, f, bits)
    b, ds, dz = pack_bundles(up, down, fmt, np.arange(f))
    u, d = unpack_bundles(b, fmt, np.arange(f), ds, dz)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    a = silu(rng.standard_normal((n, f))).astype(np.float32)
    thr = 0.3
    neurons = np.array([j for j in range(f) if (np.abs(a[:, j]) > thr).any()], np.int32)
    order = rng.permutation(len(neurons))  # any order of the listed neurons
    neurons = neurons[order]
    ptrs = np.array([b[j].ctypes.data for j in neurons], np.uint64)
    sp = _Sparse(thr, bits, 32, fmt.dim_pad, None, None, 32, ds.ctypes.data, dz.ctypes.data)
    y = np.zeros((n, dim), np.float32)
    h = np.zeros((n, len(neurons)), np.float32)
    P = ctypes.c_void_p
    fn.argtypes = [P, P, P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, P, P, P,
                   ctypes.c_int64, P, ctypes.c_int32]  # fmt: skip
    fn.restype = None
    for threads in (1, 2):
        fn(y.ctypes.data, x.ctypes.data, a.ctypes.data, n, dim, f, ctypes.addressof(sp),
           neurons.ctypes.data, ptrs.ctypes.data, len(neurons), h.ctypes.data, threads)  # fmt: skip
        mask = np.abs(a) > thr
        want = ((a * mask) * (x @ u.T)) @ d.T
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_compiled_bundles_are_the_dense_ffn(art, tmp_path):
    """No second rounding: every layer's bundles hold its up and down projections exactly as the
    artifact's dense FFN computes them; an artifact of the older layout is refused, naming the
    fix."""
    from edgert.format.lut import PackedWeight

    a = Artifact.open(art)
    for i, (u, d) in enumerate(bundle_weights(a)):
        for proj, got in (("ffn_up", u), ("ffn_down", d)):
            name = names.weight(i, proj)
            pw = PackedWeight.from_buffers(a.tensors[name]["kernel"], a.read_tensor(name))
            np.testing.assert_array_equal(got, pw.dequantize())
    old = tmp_path / "old.edgert"
    shutil.copytree(art, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["sparse_ffn"]["down_group"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgertError, match="older layout"):
        SparseSpec.of(Artifact.open(old, verify_resident=False))


def test_thresholds_rise_with_sparsity(art):
    spec = SparseSpec.of(Artifact.open(art))
    assert spec.sparsities == list(SPARSITIES)
    t = np.array(spec.thresholds)
    assert t.shape == (len(SPARSITIES), 4)
    assert (np.diff(t, axis=0) > 0).all()


@pytest.mark.parametrize("sparsity", [None, 0.5, 0.8])
def test_sparse_forward_equals_numpy_dropping_the_same_neurons(art, sparsity):
    """None: every neuron active (threshold -1), so the bundle path is checked as tightly as the
    dense one (LUT activation tables, 5e-4 relative here); at a real threshold the C pass and
    numpy may disagree on neurons within rounding of it, so logits are checked looser and their
    argmax exactly."""
    a = Artifact.open(art)
    spec = SparseSpec.of(a)
    weights = bundle_weights(a)
    eng = open_artifact_engine(art, max_ctx=64, ffn={"sparsity": sparsity or 0.5})
    if sparsity is None:
        thr, tol = [-1.0] * 4, 1e-3
        for sp in eng.native._sparse:
            sp.threshold = -1.0
    else:
        thr, tol = spec.thresholds_for(sparsity), 2e-2
    ref = sparse_reference(reference_model(a), thr, weights, max_ctx=64)
    toks = [5, 17, 99, 3, 250, 7, 42]
    for step in (toks, [11]):  # a prompt, then one decode step
        want, got = ref.forward(step), eng.forward(step)
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
        assert (got.argmax(-1) == want.argmax(-1)).all()
    st = eng.stream_stats
    assert st.decode_calls == 1
    assert st.active_fraction == 1 if sparsity is None else 0 < st.active_fraction < 1
    eng.close()


def test_window_cache_size_never_changes_tokens(art):
    a = Artifact.open(art)
    full = open_artifact_engine(art, max_ctx=64, ffn={"sparsity": 0.5})
    want = tokens(full)
    assert full.stream_stats.hit_rate > 0.5  # every neuron read stays cached
    full.close()
    minimum = plan_sparse(a, a.config(), max_ctx=64, budget=1 << 40, sparsity=0.5).minimum
    B = SparseSpec.of(a).fmt.nbytes
    reads = []
    for budget, window in ((minimum, 0), (minimum + 300 * B, 0), (minimum + 300 * B, 2)):
        e = open_artifact_engine(
            art, max_ctx=64, dram_budget=budget, ffn={"sparsity": 0.5, "window": window}
        )
        assert tokens(e) == want, (budget, window)
        assert e.dram_plan.planned <= budget
        reads.append(e.stream_stats.hit_rate)
        e.close()
    assert reads[0] == 0 < reads[1]  # no cache at the minimum: every active neuron is read


def test_activity_trace_replayed_through_the_window_cache(art):
    """The compiler records which neurons decode activates; the planner replays it through the
    window cache of each plan (what a run would read, without reading)."""
    a = Artifact.open(art)
    cfg = a.config()
    levels = a.read_tensor(names.ACTIVITY_TRACE)["levels"]
    assert levels.shape == (TRACE_TOKENS, 4, cfg.ffn_dim) and levels.min() >= 1
    B = SparseSpec.of(a).fmt.nbytes

    def replayed(sparsity, budget=None, window=0, gap=0):
        p = sparse_plan(
            a, cfg, max_ctx=64, budget=budget, sparsity=sparsity, window=window, gap_bytes=gap
        )
        return p, p.replayed

    # sparsity 0: every neuron active; no budget: all read while warming up, then all hits
    p, r = replayed(0.0)
    assert r["steps"] == TRACE_TOKENS - TRACE_WARMUP and r["active_per_token"] == p.neurons
    assert r["hit_rate"] == 1.0 and r["bytes_per_token"] == r["requests_per_token"] == 0
    # sparsity 0.5 on the calibration text the thresholds came from: about half active
    p, r = replayed(0.5)
    assert 0.35 < r["active_per_token"] / p.neurons < 0.65
    active = r["active_per_token"]
    # no cache: every active neuron read each step (its pages: at least its bundle)
    minimum = replayed(0.5, 1 << 40)[0].minimum
    p0, r0 = replayed(0.5, minimum)
    assert p0.slots == 0 and r0["hit_rate"] == 0 and r0["active_per_token"] == active
    assert r0["bytes_per_token"] >= active * B and r0["requests_per_token"] >= 4
    # a cache of 700 of the 1024 neurons hits and reads less (fewer pages); the window drops
    # idle ones and reads more; the replay is deterministic
    _, r1 = replayed(0.5, minimum + 700 * B)
    assert 0 < r1["hit_rate"] < 1 and r1["bytes_per_token"] < r0["bytes_per_token"]
    assert replayed(0.5, minimum + 700 * B)[1] == r1
    _, rw = replayed(0.5, minimum + 700 * B, window=1)
    assert rw["hit_rate"] < r1["hit_rate"]


def test_bench_and_inspect_predict_sparse_plans(art):
    """bench --sparsity reports the cost model's decode speed next to the measured one, with the
    replayed trace's flash bytes; inspect --sparsity shows the prediction for the target."""
    r = run_cli("bench", str(art), "--sparsity", "0.5", "--dram-budget", "off", "-p", "4",
                "-n", "4", "-r", "1", "--json")  # fmt: skip
    b = json.loads(r.stdout)
    p = b["prediction"]
    assert p["tok_s"] > 0
    assert b["stream_tg"]["decode_calls"] == 4
    # the prediction held to the run: neurons active per token, replayed from the compiler's
    # activity trace, against those the 4 decoded tokens computed (time is the benchmarks'
    # concern)
    tg = b["stream_tg"]
    active = tg["decode_active"] / tg["decode_calls"]
    assert active == pytest.approx(b["dram"]["replayed"]["active_per_token"], rel=0.25)
    i = json.loads(run_cli("inspect", str(art), "--sparsity", "0.5", "--json").stdout)
    sp = i["sparse_plan"]
    assert sp["replayed"]["active_per_token"] > 0 and sp["cost_model"]["tok_s"] > 0
    assert sp["cost_model"]["flash_bytes_per_token"] == int(sp["replayed"]["bytes_per_token"])


def test_budget_below_minimum_is_refused(art):
    a = Artifact.open(art)
    # the smallest cache a run falls back to unasked (edgert.format.kvcache.choose)
    minimum = plan_sparse(
        a, a.config(), max_ctx=64, budget=1 << 40, sparsity=0.5, kv=("q8", "q8")
    ).minimum
    with pytest.raises(EdgertError, match="below the minimum for --sparsity"):
        open_artifact_engine(art, max_ctx=64, dram_budget=minimum - 1, ffn={"sparsity": 0.5})


def test_corrupt_bundle_is_a_clear_error(art, tmp_path):
    bad = tmp_path / "bad.edgert"
    shutil.copytree(art, bad)
    m = json.loads((bad / "manifest.json").read_text())
    e = m["tensors"][names.bundles(0)]
    with open(bad / e["file"], "r+b") as f:  # every byte of layer 0's bundles
        f.seek(e["buffers"]["data"]["offset"])
        f.write(b"\xff" * e["buffers"]["data"]["nbytes"])
    eng = open_artifact_engine(bad, max_ctx=64, ffn={"sparsity": 0.5})
    with pytest.raises(ArtifactError, match="fails its checksum"):
        eng.forward([1, 2, 3])
    eng.close()


def test_cli_errors_name_the_fix(art, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "edgert", *args], capture_output=True, text=True, check=False
        )

    r = run("generate", str(art), "-p", "hi", "-n", "2", "--sparsity", "0.42")
    assert r.returncode == 2 and "0.42 was not calibrated" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("generate", str(art), "-p", "hi", "-n", "2", "--window", "3")
    assert r.returncode == 2 and "--window goes with --sparsity" in r.stderr
    r = run("generate", str(art), "-p", "hi", "-n", "4", "--sparsity", "0.5", "--json",
            "--temp", "0", "--ignore-eos")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) == 4 and out["stream"]["flash_bytes"] > 0
