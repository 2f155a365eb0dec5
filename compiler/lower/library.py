"""A language-model artifact's ``lib/model.so``: the C forward pass and the LUT kernels
(kernels_neon) compiled with the target's toolchain and linked by TVM's compiler driver
(``tvm.support.cc``) into one shared library that depends on libc, libm and pthreads only, so a
device loads it with ctypes and nothing else. For a phone (a target whose ``libc`` is bionic)
the link is compiler/lower/android.py's instead."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgert.errors import EdgertError
from edgert.format.target import Target


def tvm_version() -> str:
    """The version of the TVM that built an artifact's library (recorded in its manifest)."""
    import tvm

    return tvm.__version__


def build_library(tgt: Target, out_so: str | Path) -> None:
    """Compile the kernels for ``tgt`` (its cflags and kernel tuning) and link them into
    ``out_so``."""
    from tvm.support import cc

    from edgert.runtime.build import build_objects
    from edgert.runtime.cpu import host_flags

    flags = tgt.kernel_cflags()
    if tgt.host_simd:
        flags += [f for f in host_flags() if f not in flags]
    if tgt.libc == "bionic":
        from edgert.compiler.lower import android

        flags += android.CFLAGS
    with tempfile.TemporaryDirectory(prefix="edgert-lib-") as tmp:
        objs = build_objects(cc=tgt.cc, cflags=flags, out_dir=Path(tmp) / "obj")
        if tgt.libc == "bionic":
            android.link(tgt.cc, objs, Path(out_so), Path(tmp))
            return
        try:
            cc.create_shared(
                str(out_so), [str(o) for o in objs], options=["-lpthread", "-lm"], cc=tgt.cc
            )
        except RuntimeError as e:
            raise EdgertError(
                f"linking the kernels for target {tgt.name} failed: {str(e).strip()[-800:]}",
                f"check the toolchain ({tgt.cc})",
            ) from e
