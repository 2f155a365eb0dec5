"""What this machine's CPU can run: its features as Linux names them (arm64 hwcaps from the
kernel, else /proc/cpuinfo "Features"; x86-64 /proc/cpuinfo "flags"), which loading an artifact
holds against what its target needs (edgert.format.target.check_cpu_features), and the SIMD
flags a host build of the kernels takes."""

from __future__ import annotations

import platform
from pathlib import Path

#: arm64 hwcap bits (the kernel's arch/arm64/include/uapi/asm/hwcap.h), named as /proc/cpuinfo
#: names them: AT_HWCAP, then AT_HWCAP2
HWCAP = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
    "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
    "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
    "paca", "pacg",
)  # fmt: skip
HWCAP2 = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
    "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte",
)  # fmt: skip
AT_HWCAP, AT_HWCAP2 = 16, 26


def parse_cpuinfo(text: str, *, key: str | None = None) -> tuple[str | None, list[str]]:
    """(CPU model, features) from /proc/cpuinfo text: the first "Features" (arm64) or "flags"
    (x86) line, or only ``key``'s."""
    cpu_model, features = None, []
    for line in text.splitlines():
        k, _, val = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "hardware", "cpu part") and cpu_model is None:
            cpu_model = val.strip()
        elif k in ((key,) if key else ("flags", "features")) and not features:
            features = val.split()
    return cpu_model, features


def hwcap_features() -> list[str] | None:
    """The arm64 features the kernel gives this process (getauxval), None where it cannot
    say. Unlike /proc/cpuinfo it is right under qemu-user too, whose /proc/cpuinfo is the
    host's."""
    import ctypes

    try:
        fn = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return decode_hwcaps(fn(AT_HWCAP), fn(AT_HWCAP2)) or None


def decode_hwcaps(hwcap: int, hwcap2: int = 0) -> list[str]:
    """The names of the arm64 AT_HWCAP and AT_HWCAP2 bits set."""
    return [n for i, n in enumerate(HWCAP) if hwcap >> i & 1] + [
        n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1
    ]


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """This CPU's features as Linux names them (arm64: hwcaps, e.g. asimd, asimddp, i8mm; x86:
    /proc/cpuinfo flags, e.g. avx2, avx512_vnni); [] where they cannot be read. ``cpuinfo``
    and ``machine`` stand in for this machine's (tests)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        if cpuinfo is None:
            have = hwcap_features()
            if have:
                return have
        return parse_cpuinfo(_cpuinfo() if cpuinfo is None else cpuinfo, key="features")[1]
    return parse_cpuinfo(_cpuinfo() if cpuinfo is None else cpuinfo)[1]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def host_flags() -> list[str]:
    """SIMD flags for this machine: AVX2 (+FMA, F16C) on x86-64 when present, with AVX-512
    (F, BW, VL, and VNNI for the int8 prefill kernel) on top where the CPU has it; NEON is
    baseline on aarch64."""
    m = platform.machine().lower()
    if m in ("x86_64", "amd64"):
        flags = set(cpu_features(machine=m))
        if not {"avx2", "fma", "f16c"} <= flags:
            return []
        avx2 = ["-mavx2", "-mfma", "-mf16c"]
        if {"avx512f", "avx512bw", "avx512vl"} <= flags:
            vnni = ["-mavx512vnni"] if "avx512_vnni" in flags else []
            return [*avx2, "-mavx512f", "-mavx512bw", "-mavx512vl", *vnni]
        return avx2
    if m in ("aarch64", "arm64"):
        return ["-march=armv8-a"]
    return []
