"""Device targets: one TOML file per device (``targets/*.toml`` shipped with edgert, plus any in
``~/.config/edgert/targets`` or ``$EDGERT_TARGETS``). Users add a device by adding a file."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the share of the DRAM read bandwidth decode reaches where a target does not state its own
KERNEL_EFFICIENCY = 0.6
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "targets"


def target_dirs() -> list[Path]:
    dirs = []
    try:
        from importlib.resources import files

        dirs.append(Path(str(files("edgert.targets"))))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    if BUILTIN_DIR.is_dir() and BUILTIN_DIR not in dirs:
        dirs.append(BUILTIN_DIR)
    dirs.append(Path.home() / ".config" / "edgert" / "targets")
    if os.environ.get("EDGERT_TARGETS"):
        dirs += [Path(p) for p in os.environ["EDGERT_TARGETS"].split(os.pathsep)]
    return dirs


#: the least ratio between neighbouring core capacities (or clocks) that splits big cores from
#: little ones (:func:`big_split`)
BIG_GAP = 1.25


def big_split(speeds: dict) -> set | None:
    """The keys of ``speeds`` (core -> capacity or clock) that are big cores, None where all are
    alike.

    The rule: sort the distinct values and find the widest step between neighbours, as a ratio;
    the cores above that step are the big ones, provided it is at least BIG_GAP (1.25), else
    the cores count as alike. A phone's little cores (in-order Cortex-A55/A510/A520) do about a
    third of its fastest core's work or less, its middle ones (out-of-order A710/A715, A76/A78) half
    or more, so the widest step lies below the middle cores and they count as big: a Snapdragon
    8 Gen 2's capacities (mainline Linux's sm8550.dtsi work per MHz, 1024 / 1792 / 1894, times
    the clocks, 2.0 / 2.8 / 3.2 GHz) are about 350 for the A510s, 850 for the A715s and A710s
    and 1024 for the X3, steps of 2.4 and 1.2: the X3, A715s and A710s are big, the A510s not;
    by clock alone the steps are 1.4 and 1.14, the same split. A fixed share of the fastest
    core would not serve both measures: by clock an A510 reaches 0.63 of the X3. Cores that
    differ by less than BIG_GAP (x86 cores whose top clocks differ by a few percent, a chip of
    big cores alone) are alike: every one of them is worth a thread."""
    values = sorted(set(speeds.values()))
    if len(values) < 2:
        return None
    ratio, cut = max((hi / lo, hi) for lo, hi in itertools.pairwise(values))
    if ratio < BIG_GAP:
        return None
    return {k for k, v in speeds.items() if v >= cut}


#: the C libraries a target's devices may have (Target.libc)
LIBCS = ("glibc", "bionic")


@dataclass
class Target:
    name: str
    description: str
    arch: str  # "aarch64" | "x86_64"
    tvm_target: dict[str, Any]
    triple: str
    cc: str
    cxx: str
    cflags: list[str]
    apt: list[str]
    cpu_model: str
    cores: int
    features: list[str]
    dram_bytes: int
    dram_bandwidth_gbs: float
    flash_kind: str
    flash_read_mbs: float
    flash_latency_us: float
    #: decode's share of dram_bandwidth_gbs when memory-bound (optional [memory] key; 0.6 default)
    kernel_efficiency: float = KERNEL_EFFICIENCY
    #: weight GB/s one core's decode reaches when compute-bound (optional [cpu] key; 0: no cap)
    gemv_gbs_per_core: float = 0.0
    #: prefill's multiply-adds per second per core on the int8 path, in billions (optional [cpu]
    #: key; 0: no prefill prediction)
    int8_gmacs_per_core: float = 0.0
    #: the CPU features an artifact for this target needs, as Linux names them (hwcaps:
    #: /proc/cpuinfo "Features" on arm64, "flags" on x86-64); optional [cpu] key ``requires``,
    #: else what the -march / -m flags of the toolchain and the TVM target's mattr enable
    requires: list[str] = field(default_factory=list)
    #: where each figure of the cost model (FIGURES) comes from: "measured: COMMAND; MACHINE;
    #: DATE", "cited: SOURCE" or "assumed: WHY" (optional [sources] table: figure -> label)
    sources: dict[str, str] = field(default_factory=dict)
    #: tuning values of the kernels for this device (optional [kernels] table: name -> number,
    #: e.g. prefetch_bytes = 2048); the kernels' defaults (kernels_neon/tuning.h) elsewhere
    kernels: dict[str, int | float] = field(default_factory=dict)
    #: the kernels also take the SIMD flags of the machine that builds them (optional
    #: [toolchain] key; the `host` target, whose artifacts run where they are compiled)
    host_simd: bool = False
    #: the C library of the devices that load its artifacts' library (optional [toolchain] key):
    #: "glibc" (boards), or "bionic" (Android phones: the kernels are then linked against stubs
    #: named as bionic's libraries, compiler/lower/android.py)
    libc: str = "glibc"
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the FIGURES the file states (the others are defaults)
    stated: list[str] = field(default_factory=list)
    #: the CPU's core clusters in the file's order (the shipped files: fastest first):
    #: ``{"count", "max_mhz", "kind"}`` each, counts adding up to ``cores`` (optional [cpu] key
    #: ``clusters``; [] where the file lists none)
    clusters: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def big_cores(self) -> int:
        """How many of its cores are big: those of its fastest clusters by clock, as the runtime
        tells big cores from little ones on the device (:func:`big_split`); all of
        them where the clusters are alike or the file lists none."""
        big = big_split({i: c["max_mhz"] for i, c in enumerate(self.clusters)})
        return self.cores if big is None else sum(self.clusters[i]["count"] for i in big)

    @property
    def cross_cxx(self) -> str | None:
        """The C++ compiler TVM links with for this target; None on the x86-64 host itself."""
        return self.cxx if self.arch != "x86_64" else None

    def manifest_entry(self, build_flags: Sequence[str] = (), *, tvm: bool = False) -> dict:
        """How an artifact records the target it was compiled for, with the CPU features it
        needs (so a device checks them without the target file or a compiler);
        ``build_flags``: what its build added to the target's flags (a ``host_simd`` target's
        kernels: the building machine's SIMD flags); ``tvm``: its code was generated by TVM
        for ``tvm_target`` too (ONNX models), whose mcpu lets LLVM use that core's features."""
        return {
            "name": self.name,
            "arch": self.arch,
            "triple": self.triple,
            "tvm_target": self.tvm_target,
            "cpu_features": self.required_features(build_flags, tvm=tvm),
            "libc": self.libc,
        }

    def required_features(self, build_flags: Sequence[str] = (), *, tvm: bool = False) -> list:
        """The CPU features its artifacts need: ``requires``, what ``build_flags`` enable, and
        with ``tvm`` what the TVM target's mcpu and mattr enable."""
        need = set(self.requires) | flag_features(self.arch, list(build_flags))
        if tvm:
            t = self.tvm_target
            need |= flag_features(self.arch, [], t.get("mattr", []), mcpu=t.get("mcpu"))
        return sorted(need)

    def source(self, figure: str) -> str:
        """Where ``figure`` (one of FIGURES) comes from: the file's label, else "assumed" for a
        default the file does not override, else "unlabelled"."""
        if figure in self.sources:
            return self.sources[figure]
        if figure not in self.stated:
            return f"assumed: edgert's default ({FIGURE_DEFAULTS[figure]}), the file states none"
        return "unlabelled"

    def kernel_cflags(self) -> list[str]:
        """The compiler flags of the target's kernel build: its cflags, then each tuning value
        as ``-DEDGERT_<NAME>=<value>``."""
        return [*self.cflags, *(f"-DEDGERT_{k.upper()}={v}" for k, v in self.kernels.items())]

    def toolchain_missing(self) -> list[str]:
        return [t for t in (self.cc, self.cxx) if shutil.which(t) is None]

    def require_toolchain(self) -> None:
        missing = self.toolchain_missing()
        if missing:
            raise EdgertError(
                f"target {self.name} needs the cross toolchain {', '.join(missing)}, not installed",
                f"apt-get install {' '.join(self.apt)}",
            )


def _get(d: dict, dotted: str, typ: type | tuple, path: Path) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise EdgertError(
                f"{path}: missing key {dotted!r}", "see targets/rpi5.toml for the format"
            )
        cur = cur[part]
    if not isinstance(cur, typ) or (typ in (int, float) and isinstance(cur, bool)):
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise EdgertError(f"{path}: key {dotted!r} must be a {want}, not {cur!r}")
    return cur


def _opt(d: dict, dotted: str, default: float, path: Path) -> float:
    """An optional number (``default`` where the key is absent)."""
    section, key = dotted.split(".")
    if key not in d.get(section, {}):
        return default
    v = _get(d, dotted, (int, float), path)
    if v < 0:
        raise EdgertError(f"{path}: key {dotted!r} must not be negative, not {v!r}")
    return v


#: the figures of the cost model (edgert.plan.cost) a target file gives, with the defaults of the
#: optional ones
FIGURES = (
    "memory.dram_bandwidth_gbs",
    "memory.kernel_efficiency",
    "cpu.gemv_gbs_per_core",
    "cpu.int8_gmacs_per_core",
    "flash.read_bandwidth_mbs",
    "flash.read_latency_us",
)
FIGURE_DEFAULTS = {
    "memory.kernel_efficiency": KERNEL_EFFICIENCY,
    "cpu.gemv_gbs_per_core": "0: no compute cap",
    "cpu.int8_gmacs_per_core": "0: no prefill prediction",
}
SOURCE_KINDS = ("measured:", "cited:", "assumed:")


def _sources(d: dict, path: Path) -> dict[str, str]:
    src = d.get("sources", {})
    if not isinstance(src, dict):
        raise EdgertError(f'{path}: [sources] must be a table of figure = "label"')
    for k, v in src.items():
        if k not in FIGURES:
            raise EdgertError(
                f"{path}: [sources] names {k!r}, not a figure", f"figures: {', '.join(FIGURES)}"
            )
        section, key = k.split(".")
        if key not in d.get(section, {}):
            raise EdgertError(f"{path}: [sources] labels {k!r}, which the file does not state")
        if not isinstance(v, str) or not v.startswith(SOURCE_KINDS):
            raise EdgertError(
                f"{path}: [sources] {k} must start with {', '.join(SOURCE_KINDS)}, not {v!r}"
            )
    return dict(src)


#: tuning values a target may set in its [kernels] table (kernels_neon/tuning.h says what each is)
KERNEL_TUNING = (
    "prefetch_bytes",
    "pair_prefetch_bytes",
    "q8_prefetch_bytes",
    "q8_prefetch_far_bytes",
    "spin_us",
    "i8_min_rows",
)


def _kernels(d: Any, path: Path) -> dict[str, int | float]:
    if not isinstance(d, dict):
        raise EdgertError(f"{path}: [kernels] must be a table")
    for k, v in d.items():
        if k not in KERNEL_TUNING:
            raise EdgertError(
                f"{path}: unknown kernel tuning value {k!r}", f"known: {', '.join(KERNEL_TUNING)}"
            )
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise EdgertError(f"{path}: [kernels] {k} must be a non-negative number, not {v!r}")
    return dict(d)


#: the CPU features (Linux hwcap names) each -march base architecture lets GCC emit: Armv8.1-A
#: adds CRC32, the LSE atomics (inlined for C11 atomics: the thread pool's) and RDM
_MARCH = {
    "armv8-a": {"fp", "asimd"},
    "armv8.1-a": {"fp", "asimd", "crc32", "atomics", "asimdrdm"},
    "armv8.2-a": {"fp", "asimd", "crc32", "atomics", "asimdrdm"},
    "armv8.3-a": {"fp", "asimd", "crc32", "atomics", "asimdrdm", "jscvt", "fcma", "lrcpc"},
}
#: -march=...+EXT and TVM mattr +EXT extensions on aarch64
_ARM_EXT = {
    "fp": {"fp"},
    "simd": {"asimd"},
    "neon": {"asimd"},
    "crc": {"crc32"},
    "lse": {"atomics"},
    "rdma": {"asimdrdm"},
    "rdm": {"asimdrdm"},
    "rcpc": {"lrcpc"},
    "dotprod": {"asimddp"},
    "i8mm": {"i8mm"},
    "fp16": {"fphp", "asimdhp"},
    "fullfp16": {"fphp", "asimdhp"},
    "fp16fml": {"fphp", "asimdhp", "asimdfhm"},
    "bf16": {"bf16"},
    "sve": {"sve"},
    "sve2": {"sve", "sve2"},
    "aes": {"aes", "pmull"},
    "sha2": {"sha1", "sha2"},
    "crypto": {"aes", "pmull", "sha1", "sha2"},
}
#: -mEXT compiler flags and TVM mattr +EXT on x86-64 (/proc/cpuinfo spells VNNI with a "_")
_X86_EXT = {
    "avx": {"avx"},
    "avx2": {"avx", "avx2"},
    "fma": {"fma"},
    "f16c": {"f16c"},
    "avx512f": {"avx512f"},
    "avx512bw": {"avx512bw"},
    "avx512vl": {"avx512vl"},
    "avx512dq": {"avx512dq"},
    "avx512cd": {"avx512cd"},
    "avx512vnni": {"avx512_vnni"},
    "avx512bf16": {"avx512_bf16"},
    "avxvnni": {"avx_vnni"},
    "bmi": {"bmi1"},
    "bmi2": {"bmi2"},
    "ssse3": {"ssse3"},
    "sse4.1": {"sse4_1"},
    "sse4.2": {"sse4_2"},
    "popcnt": {"popcnt"},
}


#: what LLVM may use for a TVM target's mcpu (the cores the shipped targets name; others raise)
_MCPU = {
    "cortex-a72": {"fp", "asimd", "crc32"},
    "cortex-a76": _MARCH["armv8.2-a"] | {"fphp", "asimdhp", "asimddp", "lrcpc"},
    "cortex-a78": _MARCH["armv8.2-a"] | {"fphp", "asimdhp", "asimddp", "lrcpc"},
    "cortex-a715": _MARCH["armv8.3-a"]
    | {"fphp", "asimdhp", "asimddp", "asimdfhm", "i8mm", "bf16", "sve", "sve2"},
    "haswell": {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "popcnt", "sse4_1",
                "sse4_2", "ssse3"},
}  # fmt: skip


def flag_features(
    arch: str, flags: Sequence[str], mattr: Sequence[str] = (), *, mcpu: str | None = None
) -> set[str]:
    """The CPU features code built with compiler ``flags`` (and TVM's ``mattr`` and ``mcpu``)
    may use, as Linux names them. What cannot be told from them raises (``-mcpu``, an
    ``-march``, an arm64 extension or an mcpu not listed here): the target must then list its
    features itself. On x86-64 other ``-m`` flags are taken for tuning (``-mtune``)."""
    out: set[str] = set()
    if mcpu:
        if mcpu not in _MCPU:
            raise EdgertError(
                f"cannot tell which CPU features TVM's mcpu {mcpu} enables",
                "list them as [cpu] requires = [...] (the names /proc/cpuinfo uses)",
            )
        out |= _MCPU[mcpu]

    def unknown(flag: str) -> EdgertError:
        return EdgertError(
            f"cannot tell which CPU features {flag} enables",
            "list them as [cpu] requires = [...] (the names /proc/cpuinfo uses)",
        )

    if arch == "aarch64":
        for f in flags:
            if f.startswith("-mcpu="):
                raise unknown(f)
            if not f.startswith("-march="):
                continue
            base, *exts = f.split("=", 1)[1].split("+")
            if base not in _MARCH:
                raise unknown(f)
            out |= _MARCH[base]
            for e in exts:
                if e.startswith("no"):
                    out -= _ARM_EXT.get(e[2:], set())
                elif e in _ARM_EXT:
                    out |= _ARM_EXT[e]
                else:
                    raise unknown(f"{f} (+{e})")
        for a in mattr:
            if a.startswith("+"):
                if a[1:] not in _ARM_EXT:
                    raise unknown(f"mattr {a}")
                out |= _ARM_EXT[a[1:]]
        return out
    for f in flags:
        if f.startswith(("-march=", "-mcpu=")):
            raise unknown(f)
        if f.startswith("-m") and f[2:] in _X86_EXT:
            out |= _X86_EXT[f[2:]]
    for a in mattr:
        if a.startswith("+") and a[1:] in _X86_EXT:
            out |= _X86_EXT[a[1:]]
    return out


def _clusters(d: dict, path: Path) -> list[dict[str, Any]]:
    """[cpu] clusters: a list of ``{count, max_mhz, kind}`` whose counts add up to [cpu] cores."""
    cpu = d.get("cpu", {})
    if "clusters" not in cpu:
        return []
    fmt = 'clusters = [{count = 1, max_mhz = 3200, kind = "Cortex-X3"}, ...]'
    cl = cpu["clusters"]
    if not isinstance(cl, list) or not cl:
        raise EdgertError(f"{path}: [cpu] clusters must be a list of tables, not {cl!r}", fmt)
    out = []
    for i, c in enumerate(cl):
        what = f"{path}: [cpu] clusters[{i}]"
        if not isinstance(c, dict) or set(c) != {"count", "max_mhz", "kind"}:
            raise EdgertError(f"{what} must have count, max_mhz and kind, not {c!r}", fmt)
        n, mhz, kind = c["count"], c["max_mhz"], c["kind"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise EdgertError(f"{what}: count must be an integer >= 1, not {n!r}")
        if not isinstance(mhz, (int, float)) or isinstance(mhz, bool) or not mhz > 0:
            raise EdgertError(f"{what}: max_mhz must be a positive number, not {mhz!r}")
        if not isinstance(kind, str) or not kind:
            raise EdgertError(f"{what}: kind must name the core, not {kind!r}", fmt)
        out.append({"count": n, "max_mhz": mhz, "kind": kind})
    total, cores = sum(c["count"] for c in out), _get(d, "cpu.cores", int, path)
    if total != cores:
        counts = " + ".join(str(c["count"]) for c in out)
        raise EdgertError(
            f"{path}: [cpu] clusters count {counts} = {total} cores, but [cpu] cores = {cores}",
            "make the clusters' counts add up to cores",
        )
    return out


def _requires(d: dict, path: Path) -> list[str]:
    """[cpu] requires, or what the toolchain's flags and the TVM target's mattr enable."""
    if "requires" in d.get("cpu", {}):
        req = _get(d, "cpu.requires", list, path)
        if not all(isinstance(f, str) and f for f in req):
            raise EdgertError(f"{path}: [cpu] requires must list feature names, not {req!r}")
        return list(req)
    try:
        found = flag_features(
            _get(d, "arch", str, path),
            _get(d, "toolchain.cflags", list, path),
            _get(d, "tvm.target", dict, path).get("mattr", []),
        )
    except EdgertError as e:
        raise EdgertError(f"{path}: {e.message}", e.fix) from e
    return sorted(found)


#: what the less obvious feature names stand for, in refusals
FEATURE_NAMES = {
    "asimddp": "dot product",
    "atomics": "LSE atomics",
    "asimdrdm": "rounding doubling multiply",
    "i8mm": "int8 matrix multiply",
    "fphp": "fp16",
    "asimdhp": "fp16 SIMD",
    "lrcpc": "RCpc loads",
}


def artifact_features(entry: dict) -> list[str] | None:
    """The CPU features an artifact's target entry (its manifest's ``target``) says it needs
    (every artifact the compiler writes records them); for a manifest made without them, its
    target file's as it is on this machine now; None where neither says."""
    if isinstance(entry.get("cpu_features"), list):
        return [str(f) for f in entry["cpu_features"]]
    try:
        return load_target(entry["name"]).required_features()
    except (EdgertError, KeyError):
        return None


def features_known(arch: str, have) -> bool:
    """Whether ``have`` is a feature list of an ``arch`` CPU at all: empty where a device could
    not read its own, and on arm64 under qemu-user /proc/cpuinfo is the x86 host's."""
    return ("fp" if arch == "aarch64" else "sse2") in set(have or ())


def check_cpu_features(entry: dict, have, *, what: str, where: str) -> None:
    """Refuse to run (or ship) artifact ``what``, compiled for the target ``entry`` describes,
    where the CPU (``where``, whose features are ``have``) lacks one it needs: its code would
    stop with an illegal instruction (SIGILL). Nothing is refused where the features needed or
    the CPU's are not known."""
    need = artifact_features(entry)
    arch = entry.get("arch", "")
    if not need or not features_known(arch, have):
        return
    have = set(have)
    missing = [f for f in need if f not in have]
    if not missing:
        return
    named = ", ".join(f"{f} ({FEATURE_NAMES[f]})" if f in FEATURE_NAMES else f for f in missing)
    fits = []
    try:
        fits = [n for n, t in list_targets().items()
                if t.arch == arch and not t.host_simd and set(t.requires) <= have
                and t.libc == entry.get("libc", "glibc")]  # fmt: skip
    except EdgertError:
        pass  # a broken target file elsewhere: no suggestion
    raise EdgertError(
        f"{what} (target {entry.get('name')}) needs the CPU features {named}, which {where} "
        "lacks: its code would stop with an illegal instruction",
        f"compile it with --target {' or '.join(fits)}"
        if fits
        else "compile it for a target this CPU matches (`edgert targets`)",
    )


def parse_target(path: Path) -> Target:
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgertError(f"{path}: not valid TOML: {e}") from e
    num = (int, float)
    t = Target(
        name=_get(d, "name", str, path),
        description=_get(d, "description", str, path),
        arch=_get(d, "arch", str, path),
        tvm_target=_get(d, "tvm.target", dict, path),
        triple=_get(d, "toolchain.triple", str, path),
        cc=_get(d, "toolchain.cc", str, path),
        cxx=_get(d, "toolchain.cxx", str, path),
        cflags=_get(d, "toolchain.cflags", list, path),
        apt=_get(d, "toolchain.apt", list, path),
        cpu_model=_get(d, "cpu.model", str, path),
        cores=_get(d, "cpu.cores", int, path),
        features=_get(d, "cpu.features", list, path),
        requires=_requires(d, path),
        clusters=_clusters(d, path),
        dram_bytes=_get(d, "memory.dram_bytes", int, path),
        dram_bandwidth_gbs=float(_get(d, "memory.dram_bandwidth_gbs", num, path)),
        flash_kind=_get(d, "flash.kind", str, path),
        flash_read_mbs=float(_get(d, "flash.read_bandwidth_mbs", num, path)),
        flash_latency_us=float(_get(d, "flash.read_latency_us", num, path)),
        kernel_efficiency=float(_opt(d, "memory.kernel_efficiency", KERNEL_EFFICIENCY, path)),
        gemv_gbs_per_core=float(_opt(d, "cpu.gemv_gbs_per_core", 0.0, path)),
        int8_gmacs_per_core=float(_opt(d, "cpu.int8_gmacs_per_core", 0.0, path)),
        kernels=_kernels(d.get("kernels", {}), path),
        host_simd="host_simd" in d.get("toolchain", {})
        and _get(d, "toolchain.host_simd", bool, path),
        libc=_get(d, "toolchain.libc", str, path) if "libc" in d.get("toolchain", {}) else "glibc",
        path=str(path),
        extra={k: v for k, v in d.get("tvm", {}).items() if k != "target"},
        sources=_sources(d, path),
        stated=[f for f in FIGURES if f.split(".")[1] in d.get(f.split(".")[0], {})],
    )
    if t.arch not in ("aarch64", "x86_64"):
        raise EdgertError(f"{path}: key 'arch' must be aarch64 or x86_64, not {t.arch!r}")
    if t.libc not in LIBCS or (t.libc == "bionic" and t.arch != "aarch64"):
        raise EdgertError(
            f"{path}: key 'toolchain.libc' must be one of {', '.join(LIBCS)} (bionic: aarch64 "
            f"only), not {t.libc!r}"
        )
    if "kind" not in t.tvm_target:
        raise EdgertError(f"{path}: key 'tvm.target' needs a 'kind' (e.g. \"llvm\")")
    if t.name != path.stem:
        raise EdgertError(
            f"{path}: key 'name' is {t.name!r} but the file is {path.name}",
            "name the file after the target",
        )
    return t


def list_targets() -> dict[str, Target]:
    """Every target found, later directories overriding earlier ones."""
    out: dict[str, Target] = {}
    for d in target_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                out[f.stem] = parse_target(f)
    return out


def find_target(name: str) -> Target | None:
    """Target ``name``, None where no directory has its file (a file that is there but broken
    still raises)."""
    for d in reversed(target_dirs()):
        f = d / f"{name}.toml"
        if f.is_file():
            return parse_target(f)
    return None


def load_target(name: str) -> Target:
    t = find_target(name)
    if t is not None:
        return t
    known = sorted({f.stem for d in target_dirs() if d.is_dir() for f in d.glob("*.toml")})
    raise EdgertError(
        f"unknown target {name!r}",
        f"known targets: {', '.join(known)}; add one as ~/.config/edgert/targets/NAME.toml",
    )


def target_flash(art) -> tuple[float, float] | None:
    """(read MB/s, latency us) of the flash of the device ``art`` was compiled for (its target
    file), None where that file is not on this machine."""
    try:
        t = load_target(art.target["name"])
    except (EdgertError, KeyError):
        return None
    return t.flash_read_mbs, t.flash_latency_us
