"""Low-bit weight formats and their offline packing (numpy), as the C kernels read them.

uniform b-bit (b = 1..4): per row and group of g columns, w = scale * (q - zero), q in [0, 2^b).
HLQ b-bit (b = 2..4, hierarchical linear quantization): w = sum_j alpha_j * bit_j(q) + beta,
one alpha per bit-plane per group, fitted by alternating least squares.
Scales are stored as float16; :meth:`PackedWeight.dequantize` gives the exact float matrix the
kernels compute with. See kernels_neon/edgert_kernels.h for the byte layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.errors import EdgertError

TILE = 32
UNIFORM_BITS = (1, 2, 3, 4)
HLQ_BITS = (2, 3, 4)
GROUP_SIZES = (32, 64, 128)
FMT_CODE = {"uniform": 0, "hlq": 1}


def _check(fmt: str, bits: int, group_size: int) -> None:
    ok = UNIFORM_BITS if fmt == "uniform" else HLQ_BITS
    if fmt not in FMT_CODE:
        raise EdgertError(f"unknown weight format {fmt!r}", "use uniform or hlq")
    if bits not in ok:
        raise EdgertError(f"{fmt} weights support {ok} bits, not {bits}")
    if group_size not in GROUP_SIZES:
        raise EdgertError(f"group size {group_size} is not supported", f"use one of {GROUP_SIZES}")


@dataclass
class PackedWeight:
    fmt: str
    bits: int
    group_size: int
    shape: tuple[int, int]  # (m, k) of the original matrix
    planes: np.ndarray  # uint8 [m_pad/32, k_pad/4, bits, 16]
    scale: np.ndarray  # float16 bits (uint16): uniform [tiles, G, 32]; hlq alpha [tiles, G, b, 32]
    zero: np.ndarray  # uint16: uniform zero / hlq beta [tiles, G, 32]

    @property
    def groups(self) -> int:
        return -(-self.shape[1] // self.group_size)

    @property
    def nbytes(self) -> int:
        return self.planes.nbytes + self.scale.nbytes + self.zero.nbytes

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "fmt": self.fmt,
            "bits": self.bits,
            "group_size": self.group_size,
            "m": self.shape[0],
            "k": self.shape[1],
        }

    def to_buffers(self) -> dict[str, np.ndarray]:
        return {"planes": self.planes, "scale": self.scale, "zero": self.zero}

    @classmethod
    def from_buffers(cls, meta: dict[str, Any], buffers: dict[str, np.ndarray]) -> PackedWeight:
        return cls(
            meta["fmt"],
            int(meta["bits"]),
            int(meta["group_size"]),
            (int(meta["m"]), int(meta["k"])),
            buffers["planes"],
            buffers["scale"],
            buffers["zero"],
        )

    # -- unpacking (for checks and the reference path) -------------------------------------
    def codes(self) -> np.ndarray:
        """The integer codes (m, k)."""
        tiles, k4, b, _ = self.planes.shape
        lo = self.planes & 15
        hi = self.planes >> 4
        nib = np.concatenate([lo, hi], axis=-1)  # (tiles, k4, b, 32 rows)
        cols = ((nib[..., None] >> np.arange(4)) & 1).astype(np.uint8)  # (tiles,k4,b,32,4)
        q = np.zeros((tiles, 32, k4, 4), np.uint8)
        for j in range(b):
            q |= (cols[:, :, j].transpose(0, 2, 1, 3) << j).astype(np.uint8)
        m, k = self.shape
        return q.reshape(tiles * 32, k4 * 4)[:m, :k]

    def _rows(self, a: np.ndarray) -> np.ndarray:
        """[tiles, G, (b,) 32] -> [m, G, (b,)] float32."""
        f = a.view(np.float16).astype(np.float32)
        f = np.moveaxis(f, -1, 1)  # tiles, 32, G, (b)
        return f.reshape(-1, *f.shape[2:])[: self.shape[0]]

    def dequantize(self) -> np.ndarray:
        m, k = self.shape
        g = self.group_size
        q = self.codes()
        qp = np.zeros((m, self.groups * g), np.float32)
        qp[:, :k] = q
        qg = qp.reshape(m, self.groups, g)
        zero = self._rows(self.zero)  # (m, G)
        if self.fmt == "uniform":
            w = self._rows(self.scale)[..., None] * (qg - zero[..., None])
        else:
            alpha = self._rows(self.scale)  # (m, G, b)
            bits = ((qg[..., None].astype(np.uint8) >> np.arange(self.bits)) & 1).astype(np.float32)
            w = np.einsum("mgcb,mgb->mgc", bits, alpha) + zero[..., None]
        return w.reshape(m, -1)[:, :k].astype(np.float32)


# -- packing ----------------------------------------------------------------------------------
def _pad_rows(a: np.ndarray, m_pad: int) -> np.ndarray:
    out = np.zeros((m_pad, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def _tile_params(a: np.ndarray, m_pad: int) -> np.ndarray:
    """(m, G, (b,)) float -> float16 bits [tiles, G, (b,), 32]."""
    a = _pad_rows(np.asarray(a, np.float32), m_pad).astype(np.float16).view(np.uint16)
    a = a.reshape(m_pad // TILE, TILE, *a.shape[1:])
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def pack_planes(codes: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    m, k = codes.shape
    m_pad = -(-m // TILE) * TILE
    k_pad = -(-k // group_size) * group_size
    q = np.zeros((m_pad, k_pad), np.uint8)
    q[:m, :k] = codes
    q = q.reshape(m_pad // TILE, TILE, k_pad // 4, 4)
    planes = np.empty((m_pad // TILE, k_pad // 4, bits, 16), np.uint8)
    weights = (1 << np.arange(4)).astype(np.uint8)
    for j in range(bits):
        nib = (((q >> j) & 1) * weights).sum(-1).astype(np.uint8)  # (tiles, 32, k4)
        byte = nib[:, :16] | (nib[:, 16:] << 4)  # (tiles, 16, k4)
        planes[:, :, j, :] = byte.transpose(0, 2, 1)
    return planes


def _validate_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size == 0:
        raise EdgertError(
            f"weight codes must be a non-empty (m, k) matrix, got shape {codes.shape}"
        )
    if codes.min() < 0 or codes.max() >= 1 << bits:
        raise EdgertError(f"codes out of range for {bits} bits")
    return codes.astype(np.uint8)


def pack_uniform(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, *, bits: int, group_size: int
) -> PackedWeight:
    """Pack codes (m, k) with per-group scales/zeros (m, G): w = scale * (code - zero)."""
    _check("uniform", bits, group_size)
    codes = _validate_codes(codes, bits)
    m, k = codes.shape
    G = -(-k // group_size)
    for name, a in (("scales", scales), ("zeros", zeros)):
        if np.shape(a) != (m, G):
            raise EdgertError(f"{name} must have shape {(m, G)}, got {np.shape(a)}")
    m_pad = -(-m // TILE) * TILE
    return PackedWeight(
        "uniform",
        bits,
        group_size,
        (m, k),
        pack_planes(codes, bits, group_size),
        _tile_params(scales, m_pad),
        _tile_params(zeros, m_pad),
    )


def pack_hlq(
    codes: np.ndarray, plane_scales: np.ndarray, offsets: np.ndarray, *, bits: int, group_size: int
) -> PackedWeight:
    """Pack codes (m, k) with per-plane scales (m, G, bits) and offsets (m, G)."""
    _check("hlq", bits, group_size)
    codes = _validate_codes(codes, bits)
    m, k = codes.shape
    G = -(-k // group_size)
    if np.shape(plane_scales) != (m, G, bits):
        raise EdgertError(
            f"plane_scales must have shape {(m, G, bits)}, got {np.shape(plane_scales)}"
        )
    if np.shape(offsets) != (m, G):
        raise EdgertError(f"offsets must have shape {(m, G)}, got {np.shape(offsets)}")
    m_pad = -(-m // TILE) * TILE
    return PackedWeight(
        "hlq",
        bits,
        group_size,
        (m, k),
        pack_planes(codes, bits, group_size),
        _tile_params(plane_scales, m_pad),
        _tile_params(offsets, m_pad),
    )


# -- quantization -----------------------------------------------------------------------------
def _groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """w (m, k) -> (m, G, g) padded by repeating each group's last value (no effect on min/max),
    and a mask of real columns."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.size == 0 or not np.isfinite(w).all():
        raise EdgertError(f"weights must be a finite non-empty (m, k) matrix, got {w.shape}")
    m, k = w.shape
    G = -(-k // group_size)
    pad = G * group_size - k
    wp = np.pad(w, ((0, 0), (0, pad)), mode="edge")
    mask = np.zeros(G * group_size, bool)
    mask[:k] = True
    return wp.reshape(m, G, group_size), mask.reshape(G, group_size)


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


#: shrink factors of the [min, max] range tried per group (the best by squared error is kept)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
#: further factors tried at 1 bit (two levels sit near +-0.8 sigma, a third of a group's range)
CLIP_RATIOS_1BIT = (0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25)


def _uniform_params(g: np.ndarray, mask: np.ndarray, bits: int, clip: bool):
    """Per-group (scale, zero) as float16 values, and codes, minimising the masked squared error
    over range shrink factors (each end moved towards the group mean)."""
    lo, hi = g.min(-1), g.max(-1)
    mid = g.mean(-1)
    levels = (1 << bits) - 1
    wts = np.broadcast_to(mask, g.shape)
    best = None
    ratios = CLIP_RATIOS + (CLIP_RATIOS_1BIT if bits == 1 else ())
    for r in ratios if clip else (1.0,):
        lo_r, hi_r = mid + (lo - mid) * r, mid + (hi - mid) * r
        scale = _f16((hi_r - lo_r) / levels)
        scale = np.where(scale > 0, scale, np.float32(1.0))  # constant (or tiny-range) groups
        zero = _f16(-lo_r / scale)
        q = np.clip(np.rint(g / scale[..., None] + zero[..., None]), 0, levels)
        err = (((q - zero[..., None]) * scale[..., None] - g) ** 2 * wts).sum(-1)
        if best is None:
            best = [err, scale, zero, q]
        else:
            better = err < best[0]
            best[0] = np.where(better, err, best[0])
            best[1] = np.where(better, scale, best[1])
            best[2] = np.where(better, zero, best[2])
            best[3] = np.where(better[..., None], q, best[3])
    return best[1], best[2], best[3].astype(np.uint8)


def quantize_uniform(
    w: np.ndarray, *, bits: int, group_size: int = 64, clip: bool = True
) -> PackedWeight:
    """Asymmetric round-to-nearest per group; with ``clip`` the range is the one of
    :data:`CLIP_RATIOS` with the least squared error (else plain min/max)."""
    _check("uniform", bits, group_size)
    m, k = np.shape(w)
    g, mask = _groups(w, group_size)
    scale, zero, q = _uniform_params(g, mask, bits, clip)
    codes = q.reshape(m, -1)[:, :k]
    return pack_uniform(codes, scale, zero, bits=bits, group_size=group_size)


def quantize_hlq(w: np.ndarray, *, bits: int, group_size: int = 64, iters: int = 8) -> PackedWeight:
    """HLQ: w ~ sum_j alpha_j bit_j + beta per group, by alternating least squares, starting
    from the (range-searched) uniform quantization (alpha_j = scale * 2^j, beta = -zero*scale)."""
    _check("hlq", bits, group_size)
    m, k = np.shape(w)
    g, mask = _groups(w, group_size)
    scale, zero, _ = _uniform_params(g, mask, bits, clip=True)
    alpha = scale[..., None] * (1 << np.arange(bits)).astype(np.float32)  # (m, G, b)
    beta = -zero * scale
    combos = ((np.arange(1 << bits)[:, None] >> np.arange(bits)) & 1).astype(np.float32)  # (C, b)
    wts = np.broadcast_to(mask, g.shape).astype(np.float32)
    for it in range(iters + 1):
        a16, b16 = _f16(alpha), _f16(beta)
        values = np.einsum("cb,mgb->mgc", combos, a16) + b16[..., None]  # (m, G, C)
        # assign each weight to the nearest representable value
        q = np.empty(g.shape, np.uint8)
        best = np.full(g.shape, np.inf, np.float32)
        for c in range(1 << bits):
            d = np.abs(g - values[..., c : c + 1])
            better = d < best
            best = np.where(better, d, best)
            q = np.where(better, c, q).astype(np.uint8)
        if it == iters:
            break
        # least squares for [alpha, beta] given the bits (masked to real columns, ridge-regularised)
        B = np.concatenate([combos[q], np.ones((*g.shape, 1), np.float32)], -1) * wts[..., None]
        B = B.astype(np.float64)
        A = np.einsum("mgci,mgcj->mgij", B, B)
        ridge = 1e-6 * (np.trace(A, axis1=-2, axis2=-1)[..., None, None] + 1.0)
        A = A + ridge * np.eye(bits + 1)
        rhs = np.einsum("mgci,mgc->mgi", B, (g * wts).astype(np.float64))
        sol = np.linalg.solve(A, rhs[..., None])[..., 0]
        # keep the previous fit where least squares would not improve the group's error
        alpha_new, beta_new = sol[..., :bits].astype(np.float32), sol[..., bits].astype(np.float32)
        ok = np.isfinite(sol).all(-1)
        alpha = np.where(ok[..., None], alpha_new, alpha)
        beta = np.where(ok, beta_new, beta)
    codes = q.reshape(m, -1)[:, :k]
    return pack_hlq(codes, _f16(alpha), _f16(beta), bits=bits, group_size=group_size)
