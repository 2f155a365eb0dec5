import json

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


def test_bench_kernels_bad_shape():
    r = run_cli("bench-kernels", "--shapes", "huge")
    assert r.returncode == 2 and "unknown shape 'huge'" in r.stderr
