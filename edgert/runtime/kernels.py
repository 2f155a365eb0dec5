"""Bindings of the LUT kernels' C library (ctypes, no Python ABI) for packed weights
(edgert.format.lut):

    pw = pack_uniform(codes, scales, zeros, bits=2, group_size=64)   # or a compiler quantizer
    y = gemv(pw, x, threads=2); Y = gemm(pw, X); y_sel = gemv_rows(pw, x, rows)

Every call is validated in Python before any C code runs. ``ref=True`` runs the scalar twin.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from edgert.errors import EdgertError
from edgert.format.lut import FMT_CODE, PackedWeight, kernel_format
from edgert.plan.sizes import MAX_BATCH
from edgert.runtime.build import build_shared

MAX_MULTI = 4  # weights per gemm_multi call (EDGERT_MAX_MULTI)
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32


def check_cpu(lib: ctypes.CDLL, path) -> None:
    """Refuse a kernel library whose code needs CPU features this CPU lacks, before anything
    in it runs (it would die of SIGILL): the library says what its compiler flags let it use
    (``edgert_cpu_needs``), the kernel what the CPU has (``getauxval``, which the library asks
    itself: bionic, glibc and musl all have it). This holds even where the artifact's manifest
    says otherwise (edited, or from an older edgert); arm64 only (x86 builds report nothing)."""
    from edgert.runtime.cpu import decode_hwcaps

    try:
        needs_fn, have_fn = lib.edgert_cpu_needs, lib.edgert_cpu_have
    except AttributeError:
        return  # a library built before it could say
    need, have = (ctypes.c_uint64 * 2)(), (ctypes.c_uint64 * 2)()
    needs_fn(need)
    have_fn(have)
    missing = decode_hwcaps(need[0] & ~have[0], need[1] & ~have[1])
    if missing:
        from edgert.format.target import FEATURE_NAMES

        named = ", ".join(f"{f} ({FEATURE_NAMES[f]})" if f in FEATURE_NAMES else f for f in missing)
        raise EdgertError(
            f"{path} needs the CPU features {named}, which this CPU lacks: its code would stop "
            "with an illegal instruction",
            "compile the model for a target this CPU matches (`edgert targets`)",
        )


def load_library(path: str | None = None) -> ctypes.CDLL:
    """The kernel library (built for this machine on first use, then cached)."""
    global _lib
    if _lib is not None and path is None:  # every call takes this path; the lock costs 0.1 us
        return _lib
    with _lock:
        if _lib is None or path is not None:
            lib = ctypes.CDLL(str(path or build_shared()))
            check_cpu(lib, path or "the kernel library")
            for name in ("edgert_lut_gemm", "edgert_lut_gemm_ref"):
                fn = getattr(lib, name)
                fn.argtypes = [_P, _P, _I64, _I64, _I64, _P, _P, _P, _I32, _I32, _I32, _I32]
                fn.restype = None
            for name in ("edgert_lut_gemv_rows", "edgert_lut_gemv_rows_ref"):
                fn = getattr(lib, name)
                fn.argtypes = [_P, _P, _I64, _I64, _P, _I64, _P, _P, _P, _I32, _I32, _I32, _I32]
                fn.restype = None
            for name in ("edgert_q8_gemm", "edgert_q8_gemm_ref"):
                fn = getattr(lib, name)
                fn.argtypes = [_P, _P, _I64, _I64, _I64, _P, _P, _I32]
                fn.restype = None
            fn = lib.edgert_lut_gemm_multi
            fn.argtypes = [_I32, _P, _P, _I64, _P, _I64, _P, _P, _P, _I32, _I32, _I32, _I32]
            fn.restype = None
            lib.edgert_read_bytes.argtypes = [_P, _I64, _I32]
            lib.edgert_read_bytes.restype = ctypes.c_uint64
            lib.edgert_kernels_isa.restype = ctypes.c_char_p
            if path is not None:
                return lib
            _lib = lib
        return _lib


def isa() -> str:
    return load_library().edgert_kernels_isa().decode()


def config(lib: ctypes.CDLL | None = None) -> dict[str, str]:
    """The ISA and tuning values a kernel library was built with (``lib``; this machine's by
    default), e.g. ``{"isa": "avx2", "prefetch_bytes": "16384", ...}``."""
    fn = (lib or load_library()).edgert_kernels_config
    fn.restype = ctypes.c_char_p
    return dict(kv.split("=", 1) for kv in fn().decode().split())


def address(a: np.ndarray) -> int:
    """The address of a contiguous array's data (through the buffer protocol: a third of the
    time of ``a.ctypes.data``, which matters on sub-millisecond decode GEMVs); read-only arrays
    take the slower way."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def weight_args(pw: PackedWeight) -> tuple:
    """The packed weight as the C functions take it: planes, scale, zero, bits, group, format.
    Validated on first use and cached on the object while its buffers stay the same arrays
    (the cache holds them, so their addresses stay valid)."""
    c = pw.__dict__.get("_c_args")
    if (
        c is not None
        and c[0] is pw.planes
        and c[1] is pw.scale
        and c[2] is pw.zero
        and c[3] == (pw.fmt, pw.bits, pw.group_size, tuple(pw.shape))
    ):
        return c[4]
    _check_packed(pw)
    args = (
        address(pw.planes),
        address(pw.scale),
        address(pw.zero),
        pw.bits,
        pw.group_size,
        kernel_format(pw.fmt, pw.zero),
    )
    key = (pw.fmt, pw.bits, pw.group_size, tuple(pw.shape))
    pw.__dict__["_c_args"] = (pw.planes, pw.scale, pw.zero, key, args)
    return args


def _check_packed(pw: PackedWeight) -> None:
    m, _k = pw.shape
    tiles, k4 = -(-m // 32), pw.groups * pw.group_size // 4
    per = pw.bits if pw.fmt == "hlq" else 1
    want = {
        "planes": ((tiles, k4, pw.bits, 16), np.uint8),
        "scale": ((tiles, pw.groups, per, 32) if per > 1 else (tiles, pw.groups, 32), np.uint16),
        "zero": ((1, 1, 32) if pw.shared_zero else (tiles, pw.groups, 32), np.uint16),
    }
    for name, (shape, dt) in want.items():
        a = getattr(pw, name)
        if a.shape != shape or a.dtype != dt or not a.flags.c_contiguous:
            raise EdgertError(
                f"packed weight buffer {name} is {a.dtype}{a.shape}, "
                f"expected contiguous {np.dtype(dt)}{shape}"
            )
    if pw.fmt not in FMT_CODE:
        raise EdgertError(f"unknown weight format {pw.fmt!r}")


def _activations(x: np.ndarray, k: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise EdgertError(f"{what} must be floating point, got {x.dtype}")
        x = x.astype(np.float32)
    if x.shape[-1] != k:
        raise EdgertError(f"{what} has {x.shape[-1]} columns but the weight has k={k}")
    return np.ascontiguousarray(x)


def gemm(pw: PackedWeight, X: np.ndarray, *, threads: int = 1, ref: bool = False) -> np.ndarray:
    """Y (n, m) = X (n, k) . W^T."""
    wargs = weight_args(pw)
    m, k = pw.shape
    X = _activations(X, k, "X")
    if X.ndim != 2:
        raise EdgertError(f"X must be (n, k), got shape {X.shape}")
    n = X.shape[0]
    Y = np.empty((n, m), np.float32)
    lib = load_library()
    fn = lib.edgert_lut_gemm_ref if ref else lib.edgert_lut_gemm
    yp, xp = address(Y), address(X)  # batches by address: views cost microseconds on a decode GEMV
    for s in range(0, n, MAX_BATCH):
        fn(yp + 4 * s * m, xp + 4 * s * k, min(MAX_BATCH, n - s), m, k, *wargs, threads)
    return Y


def gemm_multi(pws: list[PackedWeight], X: np.ndarray, *, threads: int = 1) -> list[np.ndarray]:
    """[X . W_j^T for each W_j] with one table build and one parallel job: the weights share k,
    bits, group size and format (a layer's q/k/v or gate/up projections)."""
    if not 1 <= len(pws) <= MAX_MULTI:
        raise EdgertError(f"gemm_multi takes 1 to {MAX_MULTI} weights, got {len(pws)}")
    args = [weight_args(pw) for pw in pws]
    k = pws[0].shape[1]
    for pw, a in zip(pws, args):
        if pw.shape[1] != k or a[3:] != args[0][3:]:
            raise EdgertError(
                "gemm_multi weights must share k, bits, group size and format "
                f"({pw.shape[1]}/{a[3:]} vs {k}/{args[0][3:]})"
            )
    X = _activations(X, k, "X")
    if X.ndim != 2:
        raise EdgertError(f"X must be (n, k), got shape {X.shape}")
    ys = [np.empty((X.shape[0], pw.shape[0]), np.float32) for pw in pws]
    count = len(pws)
    ptrs = [(ctypes.c_void_p * count)(*[a[i] for a in args]) for i in range(3)]
    yp = (ctypes.c_void_p * count)(*[address(y) for y in ys])
    ms = (ctypes.c_int64 * count)(*[pw.shape[0] for pw in pws])
    load_library().edgert_lut_gemm_multi(
        count, yp, address(X), X.shape[0], ms, k, *ptrs, *args[0][3:], threads
    )
    return ys


def gemv(pw: PackedWeight, x: np.ndarray, *, threads: int = 1, ref: bool = False) -> np.ndarray:
    """y (m,) = W . x (k,)."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise EdgertError(f"x must be a vector (k,), got shape {x.shape}")
    return gemm(pw, x[None], threads=threads, ref=ref)[0]


def gemv_rows(
    pw: PackedWeight, x: np.ndarray, rows: np.ndarray, *, threads: int = 1, ref: bool = False
) -> np.ndarray:
    """Only the output rows listed in ``rows`` (sorted ascending is fastest)."""
    wargs = weight_args(pw)
    m, k = pw.shape
    x = _activations(x, k, "x")
    if x.ndim != 1:
        raise EdgertError(f"x must be a vector (k,), got shape {x.shape}")
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= m)):
        raise EdgertError(f"rows must be indices in [0, {m})")
    y = np.empty(rows.size, np.float32)
    if rows.size:
        lib = load_library()
        fn = lib.edgert_lut_gemv_rows_ref if ref else lib.edgert_lut_gemv_rows
        fn(address(y), address(x), m, k, address(rows), rows.size, *wargs, threads)
    return y


def q8_gemm(
    q: np.ndarray,
    scale: np.ndarray,
    X: np.ndarray,
    *,
    k: int | None = None,
    threads: int = 1,
    ref: bool = False,
) -> np.ndarray:
    """Y (n, m) = X (n, k) . W^T for 8-bit rows (edgert.format.q8 layout: q int8 (m, kpad), scale
    float32 (m, kpad/32))."""
    q = np.ascontiguousarray(q)
    scale = np.ascontiguousarray(scale)
    if q.dtype != np.int8 or scale.dtype != np.float32 or q.ndim != 2 or q.shape[1] % 32:
        raise EdgertError("q8 weights must be int8 (m, kpad) with kpad a multiple of 32")
    m, kpad = q.shape
    if scale.shape != (m, kpad // 32):
        raise EdgertError(f"q8 scales must have shape {(m, kpad // 32)}, got {scale.shape}")
    k = k or kpad
    X = _activations(np.atleast_2d(X), k, "X")
    if not 0 < k <= kpad:
        raise EdgertError(f"k={k} does not fit q8 rows of {kpad} columns")
    Y = np.empty((X.shape[0], m), np.float32)
    lib = load_library()
    fn = lib.edgert_q8_gemm_ref if ref else lib.edgert_q8_gemm
    fn(address(Y), address(X), X.shape[0], m, k, address(q), address(scale), threads)
    return Y
