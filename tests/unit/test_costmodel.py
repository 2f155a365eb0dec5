"""The cost model's arithmetic on a hand-made plan, read sizes per flash, optional target keys."""

from pathlib import Path

import pytest

from edgert.errors import EdgertError
from edgert.plan.cost import DeviceFigures, predict_decode
from edgert.plan.dram import DramPlan
from edgert.plan.sizes import read_chunk

MB = 1_000_000


def plan(streamed):
    # 10 layers of 8 MB, a 20 MB head, 4 MB of KV cache for 1000 tokens, 1 MB read requests
    return DramPlan(
        budget=None, fixed=30 * MB, kv=4 * MB, scratch=MB, layer_bytes=[8 * MB] * 10,
        streamed=streamed, slots=2, minimum=0, max_ctx=1000, chunk=MB, head_bytes=20 * MB,
    )  # fmt: skip


def fig(**kw):
    d = {"name": "d", "dram_gbs": 10.0, "kernel_efficiency": 0.5, "gemv_gbs_per_core": 0.0,
         "cores": 4, "flash_mbs": 500.0, "flash_latency_us": 100.0}  # fmt: skip
    return DeviceFigures(**{**d, **kw})


def test_dram_bound_when_nothing_streams():
    p = predict_decode(plan([]), fig(), pos=500)
    # 100 MB of weights + half the KV cache at 5 GB/s
    assert p.bound == "dram" and p.flash_seconds == 0 and p.flash_reads_per_token == 0
    assert p.dram_bytes_per_token == 102 * MB
    assert p.tok_s == pytest.approx(5e9 / (102 * MB))


def test_flash_bound_counts_bytes_and_requests():
    p = predict_decode(plan([1, 4, 7]), fig(), pos=0)
    # 24 MB at 500 MB/s + 24 requests of 1 MB x 100 us
    assert p.flash_bytes_per_token == 24 * MB and p.flash_reads_per_token == 24
    assert p.flash_seconds == pytest.approx(0.048 + 0.0024)
    assert p.bound == "flash" and p.tok_s == pytest.approx(1 / 0.0504)
    # streaming does not change what compute reads from DRAM
    assert p.dram_bytes_per_token == predict_decode(plan([]), fig(), pos=0).dram_bytes_per_token


def test_mixture_of_experts_plan():
    from edgert.plan.moe import MoePlan

    # 4 layers x 8 experts of 3 MB, top-2; 10 MB resident read per step; 16 of 32 cached
    moe = MoePlan(
        budget=200 * MB, fixed=40 * MB, kv=4 * MB, scratch=MB, expert_bytes=3 * MB, n_experts=32,
        slots=16, minimum=0, chunk=MB, max_ctx=1000, head_bytes=10 * MB, n_layers=4, top_k=2,
    )  # fmt: skip
    assert moe.expected_hit_rate == 0.5
    assert moe.weight_bytes_per_token == 10 * MB + 8 * 3 * MB
    # half of the 8 experts a token uses miss: 4 x 3 MB, 3 requests each
    assert moe.streamed_bytes_per_token == 12 * MB and moe.flash_reads_per_token() == 12
    p = predict_decode(moe, fig(), pos=500)
    assert p.dram_bytes_per_token == 36 * MB
    assert p.flash_seconds == pytest.approx(12 * MB / 500e6 + 12 * 100e-6)
    assert p.bound == "flash" and p.planned_bytes == 40 * MB + 16 * 3 * MB
    every = MoePlan(**{**moe.__dict__, "slots": 32})
    assert every.streamed_bytes_per_token == 0 and not every.streams
    assert predict_decode(every, fig(), pos=500).bound == "dram"
    # a replayed routing trace replaces uniform routing: its hit rate, and its reads per step
    # (misses and experts read ahead)
    traced = MoePlan(
        **{**moe.__dict__, "replayed": {"steps": 80, "hit_rate": 0.75, "reads_per_token": 2.5}}
    )
    assert traced.expected_hit_rate == 0.75 and traced.misses_per_token == 2.5
    assert traced.streamed_bytes_per_token == int(2.5 * 3 * MB)
    assert traced.flash_reads_per_token() == round(2.5 * 3)
    assert traced.weight_bytes_per_token == moe.weight_bytes_per_token
    every_traced = MoePlan(**{**traced.__dict__, "slots": 32})
    assert every_traced.expected_hit_rate == 1.0 and every_traced.streamed_bytes_per_token == 0
    # the traced plan predicts as the experts are read: 2 of 4 layers' calls read 1 expert
    # ahead (it overlaps one layer's compute), 0.5 experts a step are read on a miss (waited for)
    split = MoePlan(
        **{**traced.__dict__, "replayed": {**traced.replayed, "demand_per_token": 0.5,
                                           "ahead_per_call": [0.5, 0.5]}}
    )  # fmt: skip
    t_read = 3 * MB / 500e6 + 3 * 100e-6  # one expert: 3 requests of 1 MB
    for dram_gbs, layer in ((10.0, 36 * MB / 5e9 / 4), (1.0, 36 * MB / 5e8 / 4)):
        p = predict_decode(split, fig(dram_gbs=dram_gbs), pos=500)
        want = 4 * (0.5 * layer + 0.5 * max(layer, t_read)) + 0.5 * t_read
        assert 1 / p.tok_s == pytest.approx(want)
        # all the step's reads: 7.5 MB, 8 requests (7.5 rounded)
        assert p.flash_seconds == pytest.approx(7.5 * MB / 500e6 + 8 * 100e-6)
    # reads on a miss never overlap: slower than the fully overlapped max(DRAM, flash)
    assert 1 / p.tok_s > max(p.dram_seconds, p.flash_seconds)


def test_sparse_ffn_plan_reads_after_its_gate():
    from edgert.plan.sparse import SparsePlan

    # 4 layers x 1000 neurons of 1000 B bundles, 5 MB resident read per step, sparsity 0.5
    sp = SparsePlan(
        budget=100 * MB, sparsity=0.5, window=0, fixed=20 * MB, kv=4 * MB, scratch=MB,
        staging=MB, bundle_bytes=1000, slots=3000, neurons=4000, max_ctx=1000,
        resident_touched=5 * MB, n_layers=4, chunk=MB,
    )  # fmt: skip
    # no trace: half the neurons active, a quarter of them missing the 3000-of-4000 cache
    assert sp.active_per_token == 2000 and sp.weight_bytes_per_token == 5 * MB + 2 * MB
    assert sp.streamed_bytes_per_token == 500_000 and sp.flash_reads_per_token() == 4
    # the replayed activity trace replaces that: its active neurons, bytes and requests
    traced = SparsePlan(
        **{**sp.__dict__, "replayed": {"steps": 80, "active_per_token": 1500.0, "hit_rate": 0.6,
                                       "bytes_per_token": 3 * MB, "requests_per_token": 40.4}}
    )  # fmt: skip
    assert traced.weight_bytes_per_token == 5 * MB + 1_500_000
    assert traced.streamed_bytes_per_token == 3 * MB and traced.flash_reads_per_token() == 40
    p = predict_decode(traced, fig(), pos=500)
    assert p.dram_bytes_per_token == 5 * MB + 1_500_000 + 2 * MB
    assert p.flash_seconds == pytest.approx(3 * MB / 500e6 + 40 * 100e-6)
    # the gate picks the neurons a layer reads: reads never overlap compute
    assert 1 / p.tok_s == pytest.approx(p.dram_seconds + p.flash_seconds)


def test_compute_cap_per_core():
    f = fig(gemv_gbs_per_core=1.0, cores=2)  # 2 GB/s < 10 x 0.5
    assert f.decode_gbs == 2.0
    assert fig(gemv_gbs_per_core=4.0).decode_gbs == 5.0  # memory binds first
    assert f.with_flash("e", 42.0, 1000.0).decode_gbs == 2.0


def test_dram_measured_for_the_run():
    """A run on this machine predicts with the DRAM read rate measured for it; the kernels'
    share of it and the compute cap stay the target's."""
    f = fig()  # 10 GB/s x 0.5
    assert f.with_dram(None) is f and f.with_dram(4.0).decode_gbs == 2.0
    assert fig(gemv_gbs_per_core=0.5, cores=2).with_dram(40.0).decode_gbs == 1.0  # compute binds
    p = predict_decode(plan([]), f.with_dram(4.0), pos=0)  # 100 MB at 2 GB/s
    assert p.dram_gbs == 4.0 and p.decode_gbs == 2.0 and p.dram_seconds == pytest.approx(0.05)
    assert predict_decode(plan([]), f, pos=0).dram_gbs == 10.0


def test_read_chunk_follows_the_flash():
    assert read_chunk(42, 1000) == 1 << 20  # SD card: 840 KB -> 1 MiB
    assert read_chunk(4200, 40) == 4 << 20  # UFS 4.0: 3.4 MB -> 4 MiB
    assert read_chunk(10, 10) == 256 << 10  # floor
    assert read_chunk(1e5, 1e4) == 8 << 20  # ceiling


def test_target_optional_figures(tmp_path):
    from edgert.format.target import KERNEL_EFFICIENCY, load_target, parse_target

    t = load_target("rpi5")
    text = Path(t.path).read_text()
    lines = text[: text.index("\n[sources]\n")].splitlines()
    bare = "\n".join(x for x in lines if not x.startswith(("kernel_efficiency", "gemv_gbs")))
    (tmp_path / "rpi5.toml").write_text(bare)
    t = parse_target(tmp_path / "rpi5.toml")  # the optional figures absent: their defaults
    assert t.kernel_efficiency == KERNEL_EFFICIENCY and t.gemv_gbs_per_core == 0
    host = load_target("host")
    assert 0 < host.kernel_efficiency <= 1 and host.gemv_gbs_per_core > 0
    src = bare.replace("[cpu]\n", "[cpu]\ngemv_gbs_per_core = -1\n")
    (tmp_path / "rpi5.toml").write_text(src)
    with pytest.raises(EdgertError, match="'cpu.gemv_gbs_per_core' must not be negative"):
        parse_target(tmp_path / "rpi5.toml")


def test_prefill_prediction_counts_the_prompts_multiply_adds():
    from edgert.format.model import ModelConfig
    from edgert.format.target import load_target
    from edgert.plan.cost import predict_prefill, prompt_macs

    cfg = ModelConfig(arch="llama", n_layers=2, dim=8, n_heads=2, n_kv_heads=1, head_dim=4,
                      ffn_dim=16, vocab_size=10)  # fmt: skip
    # per token and layer: q, o 8x8 each, k, v 8x4 each, gate/up/down 3 x 8x16; the head once;
    # attention: 2 heads x 4 dims x (scores + values) over 1 + 2 + 3 positions
    per_layer = 2 * 64 + 2 * 32 + 3 * 128
    assert prompt_macs(cfg, 3) == 3 * 2 * per_layer + 80 + 2 * (2 * 2 * 4 * 6)
    swa = ModelConfig(**{**cfg.__dict__, "sliding_window": 2, "swa_layers": [0]})
    assert prompt_macs(swa, 3) == prompt_macs(cfg, 3) - 2 * 2 * 4 * 1  # layer 0 sees 1 + 2 + 2
    moe = ModelConfig(**{**cfg.__dict__, "n_experts": 4, "n_experts_used": 2, "expert_ffn_dim": 6})
    assert prompt_macs(moe, 1) == 2 * (2 * 64 + 2 * 32 + 8 * 4 + 3 * 8 * 12) + 80 + 2 * 16
    p = predict_prefill(cfg, fig(int8_gmacs_per_core=1e-6, cores=2), n_prompt=3)
    assert p["ttft_s"] == pytest.approx(prompt_macs(cfg, 3) / 2000.0) and p["n_prompt"] == 3
    assert predict_prefill(cfg, fig(), n_prompt=3) is None  # no int8 rate: no prediction
    for name in ("host", "rpi5", "rpi4", "jetson-orin-nano", "android-arm64"):
        assert load_target(name).int8_gmacs_per_core > 0


def test_a_phone_is_predicted_on_its_big_cores():
    """The runtime runs on a big.LITTLE CPU's big cores (edgert.settings.init_threads): the
    cost model counts those by default (android-arm64: 5 of 8), every core on a board."""
    from edgert.format.target import load_target
    from edgert.plan.cost import DeviceFigures

    assert DeviceFigures.from_target(load_target("android-arm64")).cores == 5
    assert DeviceFigures.from_target(load_target("android-arm64"), threads=8).cores == 8
    assert DeviceFigures.from_target(load_target("rpi5")).cores == 4
