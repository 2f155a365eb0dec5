"""Building the C kernel library: a host build cached by content, and builds for any target."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgert import settings
from edgert.errors import EdgertError
from edgert.runtime.cpu import host_flags

# exact float epilogues (no FMA contraction) keep every fast path bit-identical to its _ref twin
# (kernels_neon/Makefile builds with the same flags)
BASE_FLAGS = ["-O3", "-fPIC", "-ffp-contract=off", "-std=gnu11"]


def source_dir() -> Path:
    try:
        from importlib.resources import files

        d = Path(str(files("edgert.kernels_neon")))
        if (d / "lut_gemm.c").exists():
            return d
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "kernels_neon"


def sources() -> list[Path]:
    """The library's C files: every one in kernels_neon (one per ISA beside the scalar twins,
    the thread pool, the GEMM entry points, the forward pass)."""
    return sorted(source_dir().glob("*.c"))


def headers() -> list[Path]:
    return sorted(source_dir().glob("*.h"))


def _key(cc: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    for f in sources() + headers():
        h.update(f.name.encode() + f.read_bytes())
    h.update(" ".join([cc, *flags]).encode())
    return h.hexdigest()[:16]


def _run(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        raise EdgertError(
            f"the C compiler {cmd[0]} is not installed",
            "apt-get install build-essential (or the target's cross toolchain)",
        )
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise EdgertError(f"building the kernels failed: {r.stderr.strip()[-800:]}")


def build_shared(
    *,
    cc: str = "cc",
    cflags: list[str] | None = None,
    out: Path | None = None,
    extra: list[str] | None = None,
) -> Path:
    """Build libedgert_kernels.so with ``cc`` (cached by sources + flags unless ``out`` given)."""
    flags = BASE_FLAGS + list(cflags if cflags is not None else host_flags()) + list(extra or [])
    if out is None:
        out = settings.cache_dir() / "kernels" / _key(cc, flags) / "libedgert_kernels.so"
        if out.exists():
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        _run([cc, *flags, "-shared", "-o", tmp, *map(str, sources()), "-lpthread", "-lm"])
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def build_objects(*, cc: str, cflags: list[str], out_dir: Path) -> list[Path]:
    """Object files of the kernels, for a target's library (compiler/lower/library.py)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = []
    for s in sources():
        o = out_dir / (s.stem + ".o")
        _run([cc, *BASE_FLAGS, *cflags, "-c", "-o", str(o), str(s)])
        objs.append(o)
    return objs
