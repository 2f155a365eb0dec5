import json
from pathlib import Path

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
    assert ts["android-arm64"].libc == "bionic" and "-march=armv8-a" in ts["android-arm64"].cflags
    assert {t.libc for n, t in ts.items() if n != "android-arm64"} == {"glibc"}
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


def test_required_features_cover_the_build_flags(tmp_path, monkeypatch):
    """What a shipped target says its artifacts need includes all its -march / -m flags and
    TVM mattr enable; a user's target without a list gets exactly those."""
    from edgert.format.target import flag_features

    for t in list_targets().values():
        flags = flag_features(t.arch, t.cflags, t.tvm_target.get("mattr", []))
        assert flags and flags <= set(t.requires), (t.name, flags - set(t.requires))
    text = open(load_target("rpi5").path).read()
    mine = "\n".join(ln for ln in text.splitlines() if not ln.startswith("requires"))
    (tmp_path / "mypi.toml").write_text(mine.replace('name = "rpi5"', 'name = "mypi"'))
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    assert "asimddp" in load_target("mypi").requires
    (tmp_path / "mypi.toml").write_text(
        mine.replace('name = "rpi5"', 'name = "mypi"').replace("armv8.2-a+dotprod", "armv9-a")
    )
    with pytest.raises(EdgertError, match="-march=armv9-a.*requires"):
        load_target("mypi")


def test_every_figure_says_where_it_comes_from(tmp_path, monkeypatch):
    """Each cost-model figure of a shipped target is measured (command, machine, date), cited or
    assumed; a default the file does not state counts as assumed; a label is checked."""
    from edgert.format.target import FIGURES

    shown = json.loads(run_cli("targets", "--json").stdout)["rpi4"]["figure_sources"]
    assert shown["flash.read_latency_us"].startswith("cited:")
    for name, t in list_targets().items():
        for f in FIGURES:
            label = t.source(f)
            assert label.split(":")[0] in ("measured", "cited", "assumed"), (name, f, label)
            if label.startswith("measured:"):  # a command, a machine and a date
                assert label.count(";") >= 2 and "202" in label.rsplit(";", 1)[1], (name, f)
    # the host's decode figures come from the kernels alone, not from the model runs they predict
    host = load_target("host")
    assert "bench-kernels" in host.source("cpu.gemv_gbs_per_core")
    assert "bench-kernels" in host.source("memory.kernel_efficiency")
    text = Path(load_target("rpi5").path).read_text().replace('name = "rpi5"', 'name = "lab"')
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    bare = text[: text.index("\n[sources]\n")].replace("kernel_efficiency = 0.6", "")
    (tmp_path / "lab.toml").write_text(bare)
    t = load_target("lab")
    assert t.source("memory.dram_bandwidth_gbs") == "unlabelled"
    assert t.source("memory.kernel_efficiency").startswith("assumed: edgert's default (0.6)")
    for bad, why in (
        ('"memory.dram_bandwidth_gbs" = "guessed"', "must start with measured:, cited:, assumed:"),
        ('"memory.dram_gbs" = "cited: x"', "names 'memory.dram_gbs', not a figure"),
        ('"memory.kernel_efficiency" = "cited: x"', "which the file does not state"),
    ):
        (tmp_path / "lab.toml").write_text(bare + "\n[sources]\n" + bad + "\n")
        with pytest.raises(EdgertError, match=why):
            load_target("lab")
