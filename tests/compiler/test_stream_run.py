"""Running an artifact within a DRAM budget: streamed layers give the same tokens as the
unbudgeted run, impossible budgets are refused with the minimum, flash read failures (transient,
persistent, corrupt bytes) end in retries or a clear error — never wrong tokens — and peak RSS stays
within the budget plus the process's fixed overhead over a 10 000-token generation."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXED_OVERHEAD, PREFILL_TOL, SMALL_MODEL, greedy_tokens
from edgert.compiler.quant.scheme import QuantScheme

from edgert.errors import EdgertError
from edgert.format.artifact import ArtifactError
from edgert.format.spans import layer_spans
from edgert.plan.dram import plan_dram
from edgert.plan.sizes import BUDGET_BATCH
from edgert.runtime.flash import FlashError, FlashReader
from edgert.runtime.open import open_artifact_engine

PROMPTS = ["the cat sat on", "hello world", "a b c d e"]
CTX = 10_240
SOAK_TOKENS = 10_000


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    d = tmp_path_factory.mktemp("stream")
    shape = {**SMALL_MODEL, "layers": 6, "ctx": CTX}
    g = make_synthetic_gguf(out=d / "m.gguf", arch="llama", qtype="F32", progress=False, **shape)
    return compile_model(
        model=g, target="host", out=d / "m.edgert", scheme=QuantScheme("uniform", 4, 32)
    ).out


def tokens(engine, n=32):
    return greedy_tokens(engine, PROMPTS, n)


def budgets(path, max_ctx):
    from edgert.format.artifact import Artifact

    a = Artifact.open(path)
    # under a budget the scratch is sized for BUDGET_BATCH-token calls
    p = plan_dram(a, a.config(), max_ctx=max_ctx, budget=None, n_batch=BUDGET_BATCH)
    full = p.fixed + sum(p.layer_bytes)
    return p.minimum, (p.minimum + full) // 2, full


def test_tokens_equal_unbudgeted_run(art):
    want = tokens(open_artifact_engine(art, max_ctx=64))
    lo, mid, full = budgets(art, 64)
    for b in (lo, mid):
        eng = open_artifact_engine(art, max_ctx=64, dram_budget=b)
        plan = eng.dram_plan
        assert plan.streamed and plan.planned <= b
        assert tokens(eng) == want
        # each step reads every streamed layer once; up to `slots` more are read ahead
        st, per_step = eng.streamer.stats, plan.streamed_bytes_per_token
        assert 0 <= st.flash.bytes - st.calls * per_step <= plan.staging and per_step > 0
        assert eng.flash_bytes_per_token == st.flash.bytes / st.calls
        assert plan.batch == BUDGET_BATCH
        # the untied embedding table stays in its file: each step reads its tokens' rows
        assert eng.source.embedding_rows and eng.source._emb is None
    # everything fits: nothing streams
    eng = open_artifact_engine(art, max_ctx=64, dram_budget=full)
    assert eng.streamer is None and eng.dram_plan.streamed == []
    assert tokens(eng, 8) == [t[:8] for t in want]


def test_one_staging_buffer_where_a_second_would_stream_a_layer_more(art):
    """Where a second staging buffer's bytes would keep one more layer resident, one buffer
    (fewer flash bytes per token), and that run's tokens are the unbudgeted run's; the minimum
    holds one buffer."""
    from edgert.format.artifact import Artifact

    a = Artifact.open(art)
    plan = lambda b, **kw: plan_dram(a, a.config(), max_ctx=64, budget=b, n_batch=BUDGET_BATCH,
                                     **kw)  # fmt: skip
    p = plan(plan(None).minimum)  # under a budget (the embedding table read by rows)
    n, size = len(p.layer_bytes), max(p.layer_bytes)
    assert set(p.layer_bytes) == {size}
    # a layer short of everything: two streamed through one buffer, not three through two
    # (layers of one size: a second buffer always costs a resident layer)
    one = p.fixed + (n - 1) * size
    assert (len(plan(one).streamed), plan(one).slots) == (2, 1)
    assert (len(plan(one, slots=2).streamed), plan(one, slots=2).slots) == (3, 2)
    assert plan(one + size).streamed == []
    assert p.minimum == p.fixed + size and plan(p.minimum).slots == 1
    assert len(plan(p.minimum).streamed) == n
    with pytest.raises(EdgertError, match="1 staging buffer of"):
        plan(p.minimum - 1)
    eng = open_artifact_engine(art, max_ctx=64, dram_budget=one)
    assert eng.dram_plan.slots == 1 and len(eng.streamer._free) + len(eng.streamer._pending) == 1
    assert tokens(eng, 8) == [t[:8] for t in tokens(open_artifact_engine(art, max_ctx=64), 8)]


def test_long_prompt_in_budget_sized_calls(art):
    """A prompt longer than BUDGET_BATCH runs in several forward calls under a budget (the scratch
    is sized for that many tokens), with the same logits and tokens as one unbudgeted call."""
    prompt = np.random.default_rng(0).integers(3, 200, 3 * BUDGET_BATCH + 5).tolist()
    ctx = len(prompt) + 16
    free = open_artifact_engine(art, max_ctx=ctx)
    lo, _, _ = budgets(art, ctx)
    eng = open_artifact_engine(art, max_ctx=ctx, dram_budget=lo)
    want, got = free.forward(prompt, last_only=True), eng.forward(prompt, last_only=True)
    assert eng.streamer.stats.calls == 4  # 64 + 64 + 64 + 5 tokens
    # calls of other sizes: the prefill path's int8 activations differ from the decode path's
    np.testing.assert_allclose(got, want, rtol=0, atol=PREFILL_TOL * np.abs(want).max())
    for _ in range(8):
        nxt = int(np.argmax(want))
        assert nxt == int(np.argmax(got))
        want, got = free.forward([nxt], last_only=True), eng.forward([nxt], last_only=True)


def kv_minimum(path, max_ctx, kv):
    from edgert.format.artifact import Artifact

    a = Artifact.open(path)
    p = plan_dram(a, a.config(), max_ctx=max_ctx, budget=None, n_batch=BUDGET_BATCH, kv=kv)
    return p.minimum


def test_budget_below_minimum_refused(art):
    """A budget that cannot hold the float32 KV cache's plan runs with an f16, then a q8 cache
    (no --kv-cache given); below the q8 plan's minimum it is refused, naming that minimum."""
    lo, _, _ = budgets(art, 64)
    f16, q8 = (kv_minimum(art, 64, (k, k)) for k in ("f16", "q8"))
    assert q8 < f16 < lo
    assert open_artifact_engine(art, max_ctx=64, dram_budget=lo).kv_cache == "f32"
    assert open_artifact_engine(art, max_ctx=64, dram_budget=lo - 1).kv_cache == "f16"
    assert open_artifact_engine(art, max_ctx=64, dram_budget=f16 - 1).kv_cache == "q8"
    with pytest.raises(EdgertError, match=rf"below the minimum .* needs: {q8 / 1e6:.1f} MB"):
        open_artifact_engine(art, max_ctx=64, dram_budget=q8 - 1)
    # asked for, a type is kept: float32 below its minimum is refused
    with pytest.raises(EdgertError, match=rf"below the minimum .* needs: {lo / 1e6:.1f} MB"):
        open_artifact_engine(art, max_ctx=64, dram_budget=lo - 1, kv_cache="f32")


def test_transient_read_errors_are_retried(art, monkeypatch):
    want = tokens(open_artifact_engine(art, max_ctx=64), 8)
    lo, _, _ = budgets(art, 64)
    fails = {"left": 2}
    real = FlashReader._pread

    def flaky(self, view, offset):
        if fails["left"]:
            fails["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(self, view, offset)

    monkeypatch.setattr(FlashReader, "_pread", flaky)
    eng = open_artifact_engine(art, max_ctx=64, dram_budget=lo)
    assert tokens(eng, 8) == want
    assert eng.streamer.stats.flash.retries == 2


def test_unreadable_chunk_is_an_error_not_wrong_tokens(art, monkeypatch):
    from edgert.format.artifact import Artifact

    lo, _, _ = budgets(art, 64)
    eng = open_artifact_engine(art, max_ctx=64, dram_budget=lo)
    a = Artifact.open(art)
    bad = layer_spans(a, a.config().n_layers)[eng.dram_plan.streamed[-1]]
    real = FlashReader._pread

    def failing(self, view, offset):
        if bad.offset <= offset < bad.offset + bad.nbytes:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, view, offset)

    monkeypatch.setattr(FlashReader, "_pread", failing)
    with pytest.raises(FlashError, match=rf"offset {bad.offset} failed after 3 retries"):
        tokens(eng, 4)


def test_embedding_rows_leave_the_budget_to_weights(art, tmp_path):
    """Under a budget an untied embedding table is not held: the plan's fixed memory is smaller
    by the table, the rows a step reads equal the table's, and a corrupt table fails its checksum
    when the engine opens (read a piece at a time) rather than giving wrong embeddings."""
    from edgert.format import names
    from edgert.format.artifact import Artifact
    from edgert.runtime.weights import ArtifactSource

    a = Artifact.open(art)
    table = a.tensors[names.EMBEDDING]
    assert table["format"] == "q8" and a.manifest["plan"].get("head") != names.EMBEDDING
    cfg = a.config()
    held = plan_dram(a, cfg, max_ctx=64, budget=None, n_batch=BUDGET_BATCH)
    lo, mid, _ = budgets(art, 64)
    rows = plan_dram(a, cfg, max_ctx=64, budget=mid)
    assert held.fixed - rows.fixed == table["nbytes"]
    toks = np.array([0, 5, 5, cfg.vocab_size - 1])
    want = ArtifactSource(a).embedding(toks)
    got = ArtifactSource(a, embedding_rows=True).embedding(toks)
    assert got.dtype == np.float32 and np.array_equal(got, want)

    copy = tmp_path / "c.edgert"
    shutil.copytree(art, copy)
    q = table["buffers"]["q"]
    with open(copy / table["file"], "r+b") as f:
        f.seek(q["offset"] + q["nbytes"] // 2)
        b = f.read(1)
        f.seek(q["offset"] + q["nbytes"] // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=f"tensor {names.EMBEDDING} fails its checksum"):
        open_artifact_engine(copy, max_ctx=64, dram_budget=lo)


def test_corrupt_streamed_layer_fails_its_checksum(art, tmp_path):
    from edgert.format.artifact import Artifact

    copy = tmp_path / "c.edgert"
    shutil.copytree(art, copy)
    a = Artifact.open(copy)
    lo, _, _ = budgets(copy, 64)
    plan = plan_dram(a, a.config(), max_ctx=64, budget=lo)
    span = layer_spans(a, a.config().n_layers)[plan.streamed[0]]
    name, parts = next(iter(span.buffers.items()))
    rel, nb = parts["planes"][:2]
    with open(copy / span.file, "r+b") as f:
        f.seek(span.offset + rel + nb // 2)
        b = f.read(1)
        f.seek(span.offset + rel + nb // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    eng = open_artifact_engine(copy, max_ctx=64, dram_budget=lo)  # streamed: not read at load
    with pytest.raises(ArtifactError, match=f"tensor {name} fails its checksum"):
        tokens(eng, 4)


def test_flash_reader_short_reads_and_truncation(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 5 * 4096, dtype=np.uint8)
    f = tmp_path / "w.bin"
    f.write_bytes(data.tobytes())
    from edgert.runtime.memory import aligned_buffer

    class Short(FlashReader):
        def _pread(self, view, offset):  # at most 1000 bytes per call
            return super()._pread(view[:1000], offset)

    r = Short(f, direct=False)
    buf = aligned_buffer(4 * 4096)
    r.read_into(buf, 4096, 4 * 4096)
    assert np.array_equal(buf[: 4 * 4096], data[4096:])
    assert r.stats.reads == 1 and r.stats.bytes == 4 * 4096
    with pytest.raises(FlashError, match="after 3 retries"):
        FlashReader(f, direct=False).read_into(aligned_buffer(8192), 4 * 4096, 8192)


SOAK = """
import json, sys
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
from edgert.measure.bench import peak_rss_bytes, rss_bytes  # VmHWM: ru_maxrss carries pytest's peak
path, budget, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import tokenizers, edgert.runtime.engine  # the runtime's own footprint: the baseline
base = rss_bytes()
eng = open_artifact_engine(path, max_ctx=n + 16, dram_budget=budget)
r = generate(eng, prompt="a", n_predict=n, sampler=Sampler(temp=0), stop_at_eos=False)
print(json.dumps({"base": base, "peak": peak_rss_bytes(),
                  "tokens": len(r.tokens), "planned": eng.dram_plan.planned,
                  "streamed": len(eng.dram_plan.streamed), "calls": eng.streamer.stats.calls}))
"""


def test_peak_rss_within_budget_over_10k_token_soak(art):
    _, mid, _ = budgets(art, SOAK_TOKENS + 16)
    r = subprocess.run(
        [sys.executable, "-c", SOAK, str(art), str(mid), str(SOAK_TOKENS)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["tokens"] == SOAK_TOKENS and d["streamed"] > 0 and d["calls"] >= SOAK_TOKENS
    assert d["planned"] <= mid
    print("soak", d)
    assert d["peak"] <= d["base"] + mid + FIXED_OVERHEAD, d


def test_compiled_budget_is_the_default(art, tmp_path):
    from edgert.compiler.compile import compile_model

    from edgert.measure.inspect import inspect_artifact

    src = Path(art).parent / "m.gguf"  # what the module's artifact was compiled from
    lo, mid, _ = budgets(art, 64)
    q8 = kv_minimum(art, 64, ("q8", "q8"))
    scheme = QuantScheme("uniform", 4, 32)
    bad = tmp_path / "bad.edgert"
    with pytest.raises(EdgertError, match=r"below the minimum this artifact needs: [0-9.]+ MB"):
        compile_model(model=src, target="host", out=bad, scheme=scheme, dram=(q8 - 1, 64))
    assert not bad.exists()  # nothing that looks like an artifact is left
    # too tight for a float32 cache: the plan counts an f16 one, and runs default to it;
    # --kv-cache q8 is recorded as asked
    for spec, want in ((None, "f16"), ("q8", "q8")):
        tight = compile_model(model=src, target="host", out=tmp_path / f"t{want}.edgert",
                              scheme=scheme, dram=(lo - 1, 64, spec)).out  # fmt: skip
        assert json.loads((Path(tight) / "manifest.json").read_text())["dram"]["kv_cache"] == want
        assert open_artifact_engine(tight).kv_cache == want
    out = compile_model(
        model=src, target="host", out=tmp_path / "b.edgert", scheme=scheme, dram=(mid, 64)
    ).out
    m = json.loads((tmp_path / "b.edgert" / "manifest.json").read_text())
    assert m["dram"]["budget"] == mid and m["dram"]["ctx"] == 64 and m["dram"]["streamed_layers"]
    assert m["dram"]["kv_cache"] == "f32"  # the budget holds a float32 cache
    eng = open_artifact_engine(out)  # the compiled budget and context
    assert eng.dram_plan.budget == mid and eng.max_ctx == 64 and eng.streamer is not None
    assert eng.dram_plan.streamed == m["dram"]["streamed_layers"]
    off = open_artifact_engine(out, dram_budget=0)  # `--dram-budget off`
    assert off.dram_plan is None
    assert tokens(eng, 8) == tokens(off, 8)
    info = inspect_artifact(out, boards=("rpi5",))
    assert info["dram"]["compiled"] and info["dram"]["budget"] == mid
    (board,) = info["boards"]  # a board is planned for its own DRAM, which holds this model
    assert board["budget"] is None and board["cost_model"]["flash_bytes_per_token"] == 0
    c = info["prediction"]["cost_model"]
    assert c["flash_bytes_per_token"] == eng.dram_plan.streamed_bytes_per_token > 0
    assert c["tok_s"] > 0 and c["planned_bytes"] <= mid


# -- device emulation: cgroup v1 memory limit + blkio read throttle (root) --------------------


def test_bench_under_an_emulated_device(art, device_emulation):
    from conftest import run_cli

    from edgert.emulation.limits import PROCESS_OVERHEAD

    n_prompt, n_gen = 8, 16
    _, mid, _ = budgets(art, n_prompt + n_gen + 16)  # bench's context
    r = run_cli(
        "bench", str(art), "--emulate", "rpi5", "--dram-budget", str(mid),
        "-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    e, u = d["emulation"], d["emulation"]["usage"]
    assert e["target"] == "rpi5" and e["flash_read_bps"] == 450_000_000
    assert e["memory_limit_bytes"] == mid + PROCESS_OVERHEAD and e["budget_bytes"] == mid
    assert 0 < u["memory_peak_bytes"] <= e["memory_limit_bytes"]
    # the streamed reads went to the disk through the throttled group (O_DIRECT: no page cache)
    per_token = d["dram"]["streamed_bytes_per_token"]
    assert per_token > 0 and d["flash_bytes_per_token"] >= per_token
    assert u["disk_read_bytes"] >= per_token * n_gen
    # the tg runs alone: every decode step reads the streamed layers once (give or take the
    # reads ahead in flight as the runs start and end: at most the staging buffers' worth each)
    tg, plan = d["stream_tg"], d["dram"]
    assert tg["tokens"] == n_gen and tg["calls"] == n_gen
    in_flight = plan["slots"] * max(plan["layer_bytes"])
    assert abs(tg["flash_bytes_per_token"] * n_gen - per_token * n_gen) <= 2 * in_flight
    # predicted for the board as emulated here (its flash, this machine's CPU), and for the
    # board itself; both read what the run read per token
    p, b = d["prediction"], d["prediction_board"]
    assert p["device"] == "rpi5 emulated on host" and b["device"] == "rpi5"
    assert p["flash_bytes_per_token"] == b["flash_bytes_per_token"] == per_token
    assert p["tok_s"] > 0 and p["bound"] in ("dram", "flash") and b["tok_s"] > 0
    # the emulated run's flash is the throttle's (no faster than this disk, no quicker to
    # answer), its CPU this machine's and its DRAM's read rate measured for the run outside
    # the memory limit; the board's are its target file's
    from edgert.format.target import load_target

    rpi5, host = load_target("rpi5"), load_target("host")
    disk = e["host_flash"]
    assert p["flash_seconds"] == pytest.approx(
        per_token / (min(rpi5.flash_read_mbs, disk["read_mbs"]) * 1e6)
        + p["flash_reads_per_token"] * max(rpi5.flash_latency_us, disk["latency_us"]) * 1e-6
    )
    assert b["flash_seconds"] == pytest.approx(
        per_token / (rpi5.flash_read_mbs * 1e6)
        + b["flash_reads_per_token"] * rpi5.flash_latency_us * 1e-6
    )
    from edgert.plan.cost import DeviceFigures

    assert e["host_dram_read_gbs"] > 0 and p["dram_gbs"] == e["host_dram_read_gbs"]
    assert b["dram_gbs"] == rpi5.dram_bandwidth_gbs
    for pred, tgt in ((p, host), (b, rpi5)):
        fig = DeviceFigures.from_target(tgt, threads=min(d["threads"], tgt.cores))
        fig = fig.with_dram(pred["dram_gbs"])
        assert pred["decode_gbs"] == pytest.approx(fig.decode_gbs)
        assert pred["dram_seconds"] == pytest.approx(
            pred["dram_bytes_per_token"] / (fig.decode_gbs * 1e9)
        )
    assert p["peak_rss_bytes"] == d["baseline_rss_bytes"] + d["dram"]["planned"]
    # --kv-cache goes to the emulated run: its plan counts a q8 cache (2 + 32 bytes per 32)
    r = run_cli(
        "bench", str(art), "--emulate", "rpi5", "--dram-budget", str(mid), "--kv-cache", "q8",
        "-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    q8 = json.loads(r.stdout)["dram"]
    assert q8["kv"] * 128 == d["dram"]["kv"] * 34


def test_emulated_memory_limit_is_enforced(tmp_path, device_emulation):
    from edgert.emulation.limits import Emulation, EmulationError, block_device, run_emulated

    em = Emulation("t", 96 << 20, 96 << 20, 0, 450_000_000, block_device(tmp_path))
    grab = "import numpy as np; a = np.ones(512 << 20, np.uint8); print(a.sum())"
    with pytest.raises(EmulationError, match="killed at the memory limit of 100.7 MB"):
        run_emulated([sys.executable, "-c", grab], em, capture_output=True)
    ok = run_emulated([sys.executable, "-c", "print(1)"], em, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "1\n"
    assert 0 < em.usage.memory_peak_bytes <= 96 << 20


def test_emulation_unavailable_is_a_clear_error(monkeypatch, tmp_path):
    import edgert.emulation.limits as emu
    from edgert.format.target import load_target

    monkeypatch.setattr(emu, "MEMORY_ROOT", tmp_path / "nowhere")
    with pytest.raises(emu.EmulationError, match="cgroup v1 memory controller is not mounted"):
        emu.emulation(load_target("rpi5"), budget=None, model_path=tmp_path)
    monkeypatch.undo()
    with pytest.raises(emu.EmulationError, match="not on a block device"):
        emu.block_device("/proc/self/status")


# -- mixtures of experts: experts on flash, a bounded cache, reading ahead ---------------------


@pytest.fixture(scope="module")
def moe_art(tmp_path_factory):
    from edgert.compiler.compile import compile_model
    from make_synthetic_gguf import make_synthetic_gguf

    d = tmp_path_factory.mktemp("moe")
    shape = {**SMALL_MODEL, "layers": 4, "experts": 8, "top_k": 2}
    g = make_synthetic_gguf(out=d / "m.gguf", arch="mixtral", qtype="F32", progress=False, **shape)
    return compile_model(
        model=g, target="host", out=d / "m.edgert", scheme=QuantScheme("uniform", 4, 32)
    ).out


def moe_budgets(path, max_ctx=64):
    from edgert.format.artifact import Artifact
    from edgert.plan.moe import plan_moe

    a = Artifact.open(path)
    p = plan_moe(a, a.config(), max_ctx=max_ctx, budget=None, n_batch=BUDGET_BATCH)
    quarter = p.fixed + max(p.n_experts // 4, 4) * p.expert_bytes
    return p.minimum, quarter, p


def test_moe_tokens_equal_unbudgeted_run_under_every_cache_setting(moe_art):
    want = tokens(open_artifact_engine(moe_art, max_ctx=64))
    lo, quarter, full = moe_budgets(moe_art)
    assert lo < quarter < full.planned
    settings = [  # (budget, cache options)
        (quarter, {"policy": "lru", "predictor": "router", "prefetch": True}),
        (quarter, {"policy": "lfu", "predictor": "coact", "prefetch": True}),
        (quarter, {"policy": "lru", "prefetch": False}),
        (lo, {"policy": "lfu", "predictor": "router", "prefetch": True}),
    ]
    for budget, opts in settings:
        eng = open_artifact_engine(moe_art, max_ctx=64, dram_budget=budget, experts=opts)
        plan, cache = eng.dram_plan, eng.expert_cache
        assert plan.streams and plan.planned <= budget and cache is not None
        assert tokens(eng) == want, (budget, opts)
        s = cache.stats
        c = eng.cfg  # each call computes top-k distinct experts per token in every layer
        assert (
            c.n_experts_used * c.n_layers * s.calls
            <= s.lookups
            <= c.n_experts * c.n_layers * s.calls
        )
        assert 0 <= s.hits <= s.lookups and s.read_bytes > 0 and s.calls > 0
        assert len(cache._entries) <= plan.slots + eng.cfg.n_experts_used  # bounded
        if opts["prefetch"]:
            assert s.prefetched > 0 and s.prefetch_used <= s.prefetched
        else:
            assert s.prefetched == 0 and s.prefetch_used == 0
        # both predictors are scored whichever one reads ahead
        assert all(s.predicted[k] > 0 for k in ("router", "coact"))
        # the cache's memory: each cached expert in a slot of its own (or a buffer of its own,
        # read while every slot was held: the cache briefly over them, or an evicted expert's
        # read still running), evicted experts' slots free again once their reads have ended
        cache._pool.shutdown(wait=True)
        held = [slot for slot, _read in cache._slot_of.values() if slot is not None]
        assert s.evictions > 0 and len(set(held)) == len(held) <= len(cache._entries)
        assert sorted(held + cache._free) == list(range(plan.slots))
        eng.close()
    # everything fits: nothing streams
    eng = open_artifact_engine(moe_art, max_ctx=64, dram_budget=full.planned)
    assert eng.expert_cache is None and not eng.dram_plan.streams


def test_routing_trace_is_how_the_model_routes_while_decoding():
    """Per decode step and layer, the trace's router logits pick the experts the reference
    forward uses (the same counts per expert over the text fed one token per step); the next
    layer's guess is recorded for every layer but the last."""
    from edgert.compiler.transform.calibrate import routing_trace
    from test_reference_archs import CONFIGS as ARCHS
    from test_reference_archs import random_model

    from edgert.runtime.reference import ReferenceEngine, route

    for name in ("mixtral", "olmoe"):
        m = random_model(ARCHS[name], seed=2)
        c, text, n = m.config, [1, 7, 3, 9, 9, 4, 0, 12, 5], 6
        trace = routing_trace(m, text, len(text) - n)
        ref = ReferenceEngine(m, max_ctx=16)
        ref.forward(text[:-n], last_only=True)
        before = ref.expert_counts.copy()
        for t in text[-n:]:
            ref.forward([t], last_only=True)
        got = np.zeros_like(before)
        for t in range(n):
            for i in range(c.n_layers):
                got[i, route(c, trace["route"][t, i][None])[0][0]] += 1
        assert np.array_equal(got, ref.expert_counts - before), name
        assert (trace["guess"][:, -1] == 0).all() and (trace["guess"][:, :-1] != 0).any()


def test_moe_plan_replays_the_compiled_routing_trace(moe_art):
    """The compiler records how the mixture routes while decoding; the planner replays it
    through the cache's policy: without reading ahead every miss is one read, reading ahead
    adds its reads, and a budget that caches every expert reads nothing."""
    from edgert.format import names
    from edgert.format.artifact import Artifact
    from edgert.plan.moe import TRACE_TOKENS, TRACE_WARMUP, plan_moe

    a = Artifact.open(moe_art)
    c = a.config()
    assert a.tensors[names.ROUTING_TRACE]["shape"] == [TRACE_TOKENS, c.n_layers, c.n_experts]
    assert a.tensors[names.ROUTING_TRACE]["residency"] == "streamed"  # never loaded by a run
    lo, quarter, full = moe_budgets(moe_art)

    def plan(budget, **cache):
        trace = a.record(names.ROUTING_TRACE)
        return plan_moe(
            a, c, max_ctx=64, budget=budget, n_batch=BUDGET_BATCH, cache=cache, trace=trace
        )

    on_demand = plan(quarter, prefetch=False)
    r = on_demand.replayed
    assert r["steps"] == TRACE_TOKENS - TRACE_WARMUP and 0 < r["hit_rate"] < 1
    # one decode step looks up top-k experts per layer; each miss is one read
    per_step = c.n_layers * c.n_experts_used
    assert r["reads_per_token"] == pytest.approx(per_step * (1 - r["hit_rate"]))
    # ... read on demand: no layer reads ahead
    assert r["demand_per_token"] == pytest.approx(r["reads_per_token"])
    assert r["ahead_per_call"] == [1.0]
    assert on_demand.replayed == plan(quarter, prefetch=False).replayed  # deterministic
    ahead = plan(quarter, prefetch=True, predictor="router").replayed
    assert ahead["reads_per_token"] >= per_step * (1 - ahead["hit_rate"]) - 1e-9
    # every read is a miss's or one read ahead by a layer's call (n_layers calls per step)
    shares = ahead["ahead_per_call"]
    assert sum(shares) == pytest.approx(1) and len(shares) > 1
    read_ahead = c.n_layers * sum(a * share for a, share in enumerate(shares))
    assert ahead["demand_per_token"] == pytest.approx(per_step * (1 - ahead["hit_rate"]))
    assert ahead["reads_per_token"] == pytest.approx(ahead["demand_per_token"] + read_ahead)
    assert plan(lo, policy="lfu").replayed["hit_rate"] <= 1
    assert not full.streams and full.expected_hit_rate == 1 and full.streamed_bytes_per_token == 0


def test_inspect_predicts_a_mixture_from_its_active_experts(moe_art, tmp_path, monkeypatch):
    """`inspect` on a mixture: a decode step reads the resident part and top-k experts per layer
    (not every expert); `--board` plans for each board's DRAM: a board that holds the model
    streams nothing, a smaller one caches what fits and reads the rest from flash, one below the
    minimum says so."""
    from conftest import run_cli

    from edgert.measure.inspect import inspect_artifact

    _, quarter, full = moe_budgets(moe_art)
    info = inspect_artifact(moe_art, ctx=64)
    d, p = info["dram"], info["prediction"]
    assert d["budget"] is None and not d["streams"] and d["budget_from"] is None
    active = full.head_bytes + full.n_layers * full.top_k * full.expert_bytes
    assert p["weight_bytes_per_token"] == active
    assert active < full.head_bytes + full.n_experts * full.expert_bytes  # not every expert
    assert p["cost_model"]["dram_bytes_per_token"] >= active
    assert p["cost_model"]["flash_bytes_per_token"] == 0
    from edgert.format.artifact import Artifact
    from edgert.plan.moe import plan_moe

    a = Artifact.open(moe_art)
    q8 = plan_moe(a, a.config(), max_ctx=64, budget=None, n_batch=BUDGET_BATCH,
                  kv=("q8", "q8")).minimum  # fmt: skip
    rpi5 = Path(__file__).parents[2] / "targets" / "rpi5.toml"
    for name, dram in (("small-board", quarter), ("tiny-board", q8 - 1)):
        text = rpi5.read_text().replace('name = "rpi5"', f'name = "{name}"')
        (tmp_path / f"{name}.toml").write_text(
            "\n".join(
                f"dram_bytes = {dram}" if ln.startswith("dram_bytes") else ln
                for ln in text.splitlines()
            )
        )
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    info = inspect_artifact(moe_art, ctx=64, boards=("rpi5", "small-board", "tiny-board"))
    big, small, tiny = info["boards"]
    assert big["budget"] is None and big["cost_model"]["flash_bytes_per_token"] == 0
    assert small["budget"] == quarter and small["budget_from"] == "board dram"
    assert small["kv_cache"] == "f32"  # the board's DRAM holds a float32 cache
    c = small["cost_model"]
    assert c["flash_bytes_per_token"] > 0 and c["planned_bytes"] <= quarter
    assert c["tok_s"] < big["cost_model"]["tok_s"]
    assert "below the minimum" in tiny["refused"]
    r = run_cli("inspect", str(moe_art), "--ctx", "64", "--board", "small-board")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "all 32 experts resident" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("board      small-board"))
    assert f"budget {quarter / 1e9:.2f} GB" in line and "tok/s decode" in line


def test_moe_long_prompt_in_budget_sized_calls(moe_art):
    """Under a budget a mixture of experts also runs prompts BUDGET_BATCH tokens per call (its
    scratch is sized for that), with the logits and tokens of one unbudgeted call."""
    prompt = np.random.default_rng(1).integers(3, 200, 2 * BUDGET_BATCH + 7).tolist()
    ctx = len(prompt) + 16
    free = open_artifact_engine(moe_art, max_ctx=ctx)
    lo, _, _ = moe_budgets(moe_art, ctx)
    eng = open_artifact_engine(moe_art, max_ctx=ctx, dram_budget=lo)
    assert eng.dram_plan.batch == BUDGET_BATCH
    want, got = free.forward(prompt, last_only=True), eng.forward(prompt, last_only=True)
    assert eng.expert_cache.stats.calls == 3  # 64 + 64 + 7 tokens
    # calls of other sizes: the prefill path's int8 activations differ from the decode path's
    np.testing.assert_allclose(got, want, rtol=0, atol=PREFILL_TOL * np.abs(want).max())
    for _ in range(4):
        nxt = int(np.argmax(want))
        assert nxt == int(np.argmax(got))
        want, got = free.forward([nxt], last_only=True), eng.forward([nxt], last_only=True)


def test_moe_budget_below_minimum_and_unreadable_expert(moe_art, monkeypatch):
    from edgert.format.artifact import Artifact
    from edgert.format.spans import expert_spans

    lo, quarter, _ = moe_budgets(moe_art)
    with pytest.raises(EdgertError, match=r"below the minimum .*this layer's and the next's"):
        open_artifact_engine(moe_art, max_ctx=64, dram_budget=lo - 1, kv_cache="f32")
    a = Artifact.open(moe_art)
    spans = expert_spans(a, a.config())
    real = FlashReader._pread

    def failing(self, view, offset):
        if any(s.offset <= offset < s.offset + s.nbytes for s in spans.values()):
            raise OSError(errno.EIO, "Input/output error")
        return real(self, view, offset)

    monkeypatch.setattr(FlashReader, "_pread", failing)
    eng = open_artifact_engine(moe_art, max_ctx=64, dram_budget=quarter)
    with pytest.raises(FlashError, match="failed after 3 retries"):
        tokens(eng, 2)
