"""The C test driver (fast == _ref bit for bit — LUT tiles and tables, q8 rows, vec.h's helpers —
row subsets, closeness to a float product) built with the library's files for every path: host AVX-512 (where the CPU has it) and AVX2 under AddressSanitizer + UBSan, the
best host path under ThreadSanitizer, host scalar,
and aarch64 NEON (Armv8-A as on rpi4 and android, Armv8.2-A+dotprod as on rpi5) executed under
qemu-aarch64 on CPU models with and without the dot product and the int8 matrix multiply, whose
int8 tile kernels the library picks when it loads."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgert.runtime.build import sources
from edgert.runtime.cpu import host_flags

HERE = Path(__file__).parent
DRIVER = HERE / "lut_test_driver.c"
QEMU = "qemu-aarch64-static"
#: the sanitizers' runtime options: report to stderr (whatever the environment says) and stop at
#: the first report, so a report fails the run as well as the check on its text
SANITIZER_ENV = {
    "ASAN_OPTIONS": "log_path=stderr:halt_on_error=1",
    "UBSAN_OPTIONS": "log_path=stderr:halt_on_error=1:print_stacktrace=1",
    "TSAN_OPTIONS": "log_path=stderr:halt_on_error=1",
}
#: the first line of each sanitizer's report (on stderr)
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install {package}")
    return path


def build_and_run(tmp_path, cc, flags, runner=()):
    """Build the driver with the library's files and run it; its stdout. A sanitizer's report
    fails the test before the exit status and the summary line are looked at."""
    exe = tmp_path / "driver"
    srcs = [str(s) for s in sources()]  # the library's files, each its own unit as in a build
    subprocess.run(
        [cc, *flags, "-ffp-contract=off", "-o", str(exe), str(DRIVER), *srcs, "-lpthread", "-lm"],
        check=True,
        capture_output=True,
        text=True,
    )
    r = subprocess.run(
        [*runner, str(exe)], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **SANITIZER_ENV},
    )  # fmt: skip
    for report in REPORTS:
        assert report not in r.stderr, r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.MULTILINE)
    assert m, r.stdout + r.stderr
    assert r.returncode == 0 and int(m.group(2)) == 0, r.stdout + r.stderr
    assert int(m.group(1)) >= 500
    return r.stdout


def host_simd_builds() -> dict[str, list[str]]:
    """Every SIMD path this machine runs, by the ISA name the library reports: the best one
    (host_flags) and, on an AVX-512 machine, the AVX2 path it would otherwise use."""
    flags = host_flags()
    if "-mavx512bw" in flags:
        return {"avx512": flags, "avx2": [f for f in flags if not f.startswith("-mavx512")]}
    if "-mavx2" in flags:
        return {"avx2": flags}
    return {"neon" if "-march=armv8-a" in flags else "scalar": flags}


@pytest.mark.parametrize("isa", sorted(host_simd_builds()))
def test_host_simd_under_sanitizers(tmp_path, isa):
    out = build_and_run(
        tmp_path,
        need("gcc", "build-essential"),
        [
            "-O1",
            "-g",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
            *host_simd_builds()[isa],
        ],
    )
    flags = host_simd_builds()[isa]
    int8 = "avx512vnni" if "-mavx512vnni" in flags else "avx2" if "-mavx2" in flags else isa
    assert f"isa {isa} (int8 {int8})\n" in out


def test_thread_pool_under_thread_sanitizer(tmp_path):
    build_and_run(
        tmp_path, need("gcc", "build-essential"), ["-O1", "-g", "-fsanitize=thread", *host_flags()]
    )


def test_host_scalar(tmp_path):
    out = build_and_run(tmp_path, need("gcc", "build-essential"), ["-O2"])
    assert "isa scalar (int8 scalar)" in out


#: (-march, qemu's -cpu) -> the int8 tile kernel the library picks: the CPU's level, whatever
#: the build's baseline (cortex-a53: Armv8.0; cortex-a76: dotprod; max: dotprod and i8mm)
QEMU_CPUS = {
    ("armv8-a", "cortex-a53"): "neon",
    ("armv8-a", "cortex-a76"): "neon-dotprod",
    ("armv8-a", "max"): "neon-i8mm",
    ("armv8.2-a+dotprod", "cortex-a76"): "neon-dotprod",
}


@pytest.mark.parametrize("march,cpu", list(QEMU_CPUS))
def test_aarch64_neon_under_qemu(tmp_path, march, cpu):
    cc = need("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    qemu = need(QEMU, "qemu-user-static")
    out = build_and_run(
        tmp_path, cc, ["-O2", f"-march={march}", "-static"], runner=(qemu, "-cpu", cpu)
    )
    assert f"isa neon (int8 {QEMU_CPUS[march, cpu]})" in out
