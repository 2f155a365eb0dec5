"""Device targets: one TOML file per device (``targets/*.toml`` shipped with edgert, plus any in
``~/.config/edgert/targets`` or ``$EDGERT_TARGETS``). Users add a device by adding a file."""

from __future__ import annotations

import os
import shutil
import sys
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
    #: tuning values of the kernels for this device (optional [kernels] table: name -> number,
    #: e.g. prefetch_bytes = 2048); the kernels' defaults (kernels_neon/tuning.h) elsewhere
    kernels: dict[str, int | float] = field(default_factory=dict)
    #: the kernels also take the SIMD flags of the machine that builds them (optional
    #: [toolchain] key; the `host` target, whose artifacts run where they are compiled)
    host_simd: bool = False
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cross_cxx(self) -> str | None:
        """The C++ compiler TVM links with for this target; None on the x86-64 host itself."""
        return self.cxx if self.arch != "x86_64" else None

    def manifest_entry(self) -> dict[str, Any]:
        """How an artifact records the target it was compiled for."""
        return {
            "name": self.name,
            "arch": self.arch,
            "triple": self.triple,
            "tvm_target": self.tvm_target,
        }

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


#: tuning values a target may set in its [kernels] table (kernels_neon/tuning.h says what each is)
KERNEL_TUNING = ("prefetch_bytes", "pair_prefetch_bytes", "spin_us", "i8_min_rows")


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
        path=str(path),
        extra={k: v for k, v in d.get("tvm", {}).items() if k != "target"},
    )
    if t.arch not in ("aarch64", "x86_64"):
        raise EdgertError(f"{path}: key 'arch' must be aarch64 or x86_64, not {t.arch!r}")
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


def load_target(name: str) -> Target:
    for d in reversed(target_dirs()):
        f = d / f"{name}.toml"
        if f.is_file():
            return parse_target(f)
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
