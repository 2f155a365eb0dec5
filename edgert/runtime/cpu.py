"""What this machine's CPU can run: its features as Linux names them (arm64 hwcaps from the
kernel, else /proc/cpuinfo "Features"; x86-64 /proc/cpuinfo "flags"), which loading an artifact
holds against what its target needs (edgert.format.target.check_cpu_features), and the SIMD
flags a host build of the kernels takes."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edgert.format.target import BIG_GAP, big_split  # noqa: F401 (the rule lives with the targets)

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


# -- big.LITTLE: which cores the runtime's threads run on -----------------------------------------
#: sysfs's CPU directory; ``$EDGERT_SYSFS_CPU`` stands in for it (tests: a faked tree)
SYSFS_CPU = "/sys/devices/system/cpu"
SYSFS_ENV = "EDGERT_SYSFS_CPU"


def sysfs_cpu(sysfs: str | os.PathLike | None = None) -> Path:
    """The sysfs CPU directory read: ``sysfs``, else $EDGERT_SYSFS_CPU, else the real one."""
    return Path(sysfs or os.environ.get(SYSFS_ENV) or SYSFS_CPU)


def parse_cpu_list(text: str) -> set[int]:
    """The CPU ids of a kernel CPU list ("0-3,6"); ValueError where it is not one."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a < 0 or b < a:
            raise ValueError(f"bad CPU range {part!r}")
        out.update(range(a, b + 1))
    return out


def _read_int(path: Path) -> int | None:
    """A positive integer from a sysfs file; None where it is missing, unreadable or not one."""
    try:
        v = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return v if v > 0 else None


def online_cpus(sysfs: str | os.PathLike | None = None) -> set[int] | None:
    """The CPUs the kernel has online (sysfs ``online``), None where that list is unreadable."""
    try:
        return parse_cpu_list((sysfs_cpu(sysfs) / "online").read_text())
    except (OSError, ValueError):
        return None


def _online(root: Path, cpu: int, listed: set[int] | None) -> bool:
    """Whether ``cpu`` is online: in the kernel's ``online`` list, else (no list) unless its own
    ``cpuN/online`` says 0; a CPU without that file is online (cpu0 usually cannot go off)."""
    if listed is not None:
        return cpu in listed
    try:
        return (root / f"cpu{cpu}" / "online").read_text().strip() != "0"
    except OSError:
        return True


def core_capacities(
    sysfs: str | os.PathLike | None = None, allowed: set[int] | None = None
) -> dict[int, int]:
    """CPU id -> how fast that core is, for the CPUs that are online and that this process may
    run on (``allowed``: its affinity mask, ``os.sched_getaffinity(0)`` by default).

    The kernel's ``cpuN/cpu_capacity`` (arm64: the device tree's work per MHz times the core's
    top clock, the fastest core 1024) where every one of those CPUs has it and the values
    differ; else ``cpuN/cpufreq/cpuinfo_max_freq`` (kHz) where every one has it: a kernel whose
    device tree gives no capacities reports 1024 for every core, big or little, while their
    clocks still differ. Clocks alone tell cores apart less well (a Cortex-A510 does far less
    per MHz than an X3), but they stand in. A measure is used only whole, never mixed: {} where
    neither is readable for every CPU (a file missing, unreadable or not a positive number)."""
    root = sysfs_cpu(sysfs)
    if allowed is None:
        allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    listed = online_cpus(root)
    cpus = sorted(c for c in allowed if _online(root, c, listed))
    if not cpus:
        return {}
    caps = {c: _read_int(root / f"cpu{c}" / "cpu_capacity") for c in cpus}
    freqs = {c: _read_int(root / f"cpu{c}" / "cpufreq" / "cpuinfo_max_freq") for c in cpus}
    whole_caps = {c: v for c, v in caps.items() if v is not None}
    whole_freqs = {c: v for c, v in freqs.items() if v is not None}
    whole_caps = whole_caps if len(whole_caps) == len(cpus) else {}
    whole_freqs = whole_freqs if len(whole_freqs) == len(cpus) else {}
    if len(set(whole_caps.values())) > 1:
        return whole_caps
    return whole_freqs or whole_caps


def big_cores(
    sysfs: str | os.PathLike | None = None, allowed: set[int] | None = None
) -> list[int] | None:
    """The CPU ids of this machine's big cores (:func:`big_split` of :func:`core_capacities`),
    None where its cores are alike or cannot be read. Read before any pinning: once the process
    runs on its big cores alone, they are all it sees (:func:`topology` remembers)."""
    big = big_split(core_capacities(sysfs, allowed))
    return sorted(big) if big else None


#: sysfs root -> (the CPUs the process could run on when first asked, its big cores or None)
_TOPOLOGY: dict[str, tuple[frozenset[int], tuple[int, ...] | None]] = {}


def topology(sysfs: str | os.PathLike | None = None) -> tuple[frozenset[int], tuple | None]:
    """(the CPUs this process may run on, its big cores or None), read once: after
    :func:`place_threads` narrowed the process to its big cores, what it was allowed before is
    what a larger thread count widens it back to."""
    root = str(sysfs_cpu(sysfs))
    if root not in _TOPOLOGY:
        if not hasattr(os, "sched_getaffinity"):
            _TOPOLOGY[root] = (frozenset(), None)
        else:
            allowed = frozenset(os.sched_getaffinity(0))
            big = big_cores(root, set(allowed))
            _TOPOLOGY[root] = (allowed, tuple(big) if big else None)
    return _TOPOLOGY[root]


def set_affinity(cpus) -> None:
    """Put every thread of this process on ``cpus``. ``sched_setaffinity(0)`` moves the calling
    thread alone (and the threads it starts later inherit its mask); the others already running
    (BLAS's, and the kernels' pool workers when a thread count changes after they started) are
    moved one by one (``/proc/self/task``), so the whole process runs where it is placed."""
    cpus = set(cpus)
    os.sched_setaffinity(0, cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        return
    import threading

    me = threading.get_native_id()
    for tid in tids:
        if tid != me:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # exited meanwhile, or not ours to move
                pass


def place_threads(threads: int, sysfs: str | os.PathLike | None = None) -> set[int] | None:
    """Place this process for a pool of ``threads`` threads on a big.LITTLE machine: on its big
    cores while they are enough (a thread on a little core holds every job up: each waits for
    its slowest chunk), else on every core it was allowed. Returns the CPUs set; None, doing
    nothing, where the cores are alike or cannot be read."""
    allowed, big = topology(sysfs)
    if big is None:
        return None
    cpus = set(big) if threads <= len(big) else set(allowed)
    set_affinity(cpus)
    return cpus
