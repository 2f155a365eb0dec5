import json

import pytest
from conftest import run_cli

from edgert.errors import EdgertError
from edgert.format.target import list_targets, load_target

BUILTIN = {"host", "rpi4", "rpi5", "jetson-orin-nano", "android-arm64"}


def test_builtin_targets_parse():
    ts = list_targets()
    assert BUILTIN <= set(ts)
    assert ts["rpi5"].arch == "aarch64" and "+dotprod" in ts["rpi5"].tvm_target["mattr"]
    assert "+dotprod" not in ts["rpi4"].tvm_target["mattr"]
    assert "+i8mm" in ts["android-arm64"].tvm_target["mattr"]
    # only the host's kernels take the building machine's SIMD flags (AVX-512, VNNI)
    assert ts["host"].host_simd and not any(ts[n].host_simd for n in ts if n != "host")
    for t in ts.values():
        assert t.dram_bytes > 0 and t.dram_bandwidth_gbs > 0 and t.flash_read_mbs > 0


def test_user_target_and_errors(tmp_path, monkeypatch):
    src = load_target("rpi5").path
    text = open(src).read()
    (tmp_path / "mypi.toml").write_text(text.replace('name = "rpi5"', 'name = "mypi"'))
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    assert load_target("mypi").cores == 4
    bad = tmp_path / "broken.toml"
    bad.write_text(text.replace('name = "rpi5"', 'name = "broken"').replace("cores = 4", ""))
    with pytest.raises(EdgertError, match="'cpu.cores'"):
        load_target("broken")
    bad.write_text(
        text.replace('name = "rpi5"', 'name = "broken"').replace("cores = 4", 'cores = "four"')
    )
    with pytest.raises(EdgertError, match="'cpu.cores' must be a int"):
        load_target("broken")
    with pytest.raises(EdgertError, match="unknown target 'nope'.*rpi5"):
        load_target("nope")
    tuned = text.replace('name = "rpi5"', 'name = "tuned"') + "\n[kernels]\nprefetch_bytes = 4096\n"
    (tmp_path / "tuned.toml").write_text(tuned)
    t = load_target("tuned")
    assert t.kernels == {"prefetch_bytes": 4096}
    assert t.kernel_cflags() == [*t.cflags, "-DEDGERT_PREFETCH_BYTES=4096"]
    bad.write_text(tuned.replace('name = "tuned"', 'name = "broken"').replace("prefetch_", "pf_"))
    with pytest.raises(EdgertError, match="unknown kernel tuning value 'pf_bytes'"):
        load_target("broken")
    bad.write_text(tuned.replace('name = "tuned"', 'name = "broken"').replace("4096", "-1"))
    with pytest.raises(EdgertError, match="prefetch_bytes must be a non-negative number"):
        load_target("broken")


def test_cli_json():
    r = run_cli("targets", "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert BUILTIN <= set(d) and d["rpi5"]["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
