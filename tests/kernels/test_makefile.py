"""kernels_neon/Makefile builds by hand what edgert builds itself: the same library for this
machine (same outputs, same build configuration), a library for aarch64 with the public entry
points; and a target's [kernels] tuning values reach the library an artifact is built with."""

import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgert.format.lut import random_packed
from edgert.runtime.build import source_dir
from edgert.runtime.kernels import address, config, gemm, load_library, weight_args

PUBLIC = ("edgert_lut_gemm", "edgert_lut_gemm_ref", "edgert_q8_gemm", "edgert_forward",
          "edgert_forward_abi", "edgert_bundle_ffn", "edgert_kernels_isa")  # fmt: skip


def make(out: Path, *args: str) -> None:
    r = subprocess.run(
        ["make", "-C", str(source_dir()), f"OUT={out}", *args],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_makefile_builds_the_library_edgert_builds(tmp_path):
    assert shutil.which("make")
    make(tmp_path)
    by_hand = load_library(str(tmp_path / "libedgert_kernels.so"))
    assert config(by_hand)["isa"] in ("avx2", "avx512", "neon", "scalar")
    pw = random_packed(100, 300, bits=3, group_size=64, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 300)).astype(np.float32)
    y = gemm(pw, x)  # the library edgert built for this machine
    y2 = np.empty_like(y)
    by_hand.edgert_lut_gemm(address(y2), address(x), 3, 100, 300, *weight_args(pw), 1)
    assert np.array_equal(y, y2)  # whatever ISA each picked: every path is bit-identical


def test_makefile_cross_builds_for_aarch64(tmp_path):
    make(tmp_path, "CC=aarch64-linux-gnu-gcc", "ARCH_FLAGS=-march=armv8.2-a+dotprod")
    lib = tmp_path / "libedgert_kernels.so"
    assert "ARM aarch64" in subprocess.run(["file", str(lib)], check=True, capture_output=True,
                                           text=True).stdout  # fmt: skip
    syms = subprocess.run(["aarch64-linux-gnu-nm", "-D", "--defined-only", str(lib)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    exported = {line.split()[-1] for line in syms.splitlines()}
    assert set(PUBLIC) <= exported
    assert not any(s.startswith("edgert_tile") for s in exported)  # internals stay hidden


def test_target_tuning_reaches_an_artifacts_library(tmp_path, monkeypatch):
    from edgert.compiler.lower.library import build_library

    from edgert.format.target import load_target

    text = Path(load_target("host").path).read_text().replace('name = "host"', 'name = "tuned"')
    (tmp_path / "tuned.toml").write_text(
        text + "\n[kernels]\nprefetch_bytes = 4096\npair_prefetch_bytes = 1024\n"
        "q8_prefetch_far_bytes = 0\n"
    )
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    build_library(load_target("tuned"), tmp_path / "model.so")
    got = config(load_library(str(tmp_path / "model.so")))
    assert got["prefetch_bytes"] == "4096" and got["pair_prefetch_bytes"] == "1024"
    assert got["q8_prefetch_far_bytes"] == "0"
    build_library(load_target("host"), tmp_path / "default.so")
    default = config(load_library(str(tmp_path / "default.so")))
    # tuning.h's value for the host's SIMD (the building machine's: AVX2, or AVX-512)
    assert default["prefetch_bytes"] == ("8192" if default["isa"] == "avx512" else "16384")
    assert default["q8_prefetch_bytes"] == "512" and default["q8_prefetch_far_bytes"] == "32768"
