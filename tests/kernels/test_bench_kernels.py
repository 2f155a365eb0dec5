import json

import numpy as np
from conftest import run_cli


def test_bench_kernels_json():
    r = run_cli(
        "bench-kernels",
        "--shapes",
        "smollm2-down",
        "--bits",
        "2",
        "-t",
        "1",
        "--seconds",
        "0.05",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["dram_read_gbs"]["1"] > 0
    (row,) = d["rows"]
    assert (row["m"], row["k"], row["bits"], row["threads"]) == (576, 1536, 2, 1)
    assert row["gbs"] > 0 and row["fp32_gbs"] > 0 and row["api_ms"] > 0
    assert abs(row["gbs"] - row["weight_bytes"] / row["ms"] / 1e6) < 1e-6 * row["gbs"]
    assert abs(row["byte_ratio"] - 576 * 1536 * 4 / row["weight_bytes"]) < 1e-6


def test_bench_kernels_expert_shape():
    """A mixture's small expert matrices are a shape of their own (their calls' fixed cost)."""
    r = run_cli(
        "bench-kernels", "--shapes", "moe-down", "--bits", "2", "-t", "1", "--seconds", "0.05",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert (row["shape"], row["m"], row["k"]) == ("moe-down", 2048, 768) and row["gbs"] > 0


def test_bench_kernels_bad_shape():
    r = run_cli("bench-kernels", "--shapes", "huge")
    assert r.returncode == 2 and "unknown shape 'huge'" in r.stderr


def test_bench_copies_share_one_huge_page_buffer():
    from edgert.measure.kernels import _copies
    from edgert.runtime.memory import HUGE_PAGE, aligned_buffer

    buf = aligned_buffer(HUGE_PAGE + 100, huge=True)
    assert buf.ctypes.data % HUGE_PAGE == 0 and len(buf) == HUGE_PAGE + 4096
    buf[:] = 7  # the whole length is writable
    planes = np.arange(1000, dtype=np.uint8)
    scale = np.arange(30, dtype=np.uint16).reshape(3, 10)
    copies = _copies([planes, scale], 3)
    assert len(copies) == 3
    for p, s in copies:
        assert np.array_equal(p, planes) and np.array_equal(s, scale)
        assert p.ctypes.data % 64 == 0 and s.ctypes.data % 64 == 0
        assert s.shape == (3, 10) and s.dtype == np.uint16 and s.flags.c_contiguous
    copies[0][0][:] = 0  # distinct memory for every copy
    assert np.array_equal(copies[1][0], planes)
    assert copies[0][0].ctypes.data % HUGE_PAGE == 0
