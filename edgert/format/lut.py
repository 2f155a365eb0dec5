"""Low-bit weight formats and their packing (numpy), as the C kernels read them.

uniform b-bit (b = 1..6; the quantizers write 1..4): per row and group of g columns, w = scale * (q - zero), q in [0, 2^b).
A zero that is the same for every row and group (a symmetric source: llama.cpp's Q4_0 is
w = d (q - 8)) is stored once (:data:`SHARED_ZERO`): 4.5 bits per weight at group 32, not 5.
HLQ b-bit (b = 2..4, hierarchical linear quantization): w = sum_j alpha_j * bit_j(q) + beta,
one alpha per bit-plane per group, fitted by alternating least squares.
Scales are stored as float16; :meth:`PackedWeight.dequantize` gives the exact float matrix the
kernels compute with. See kernels_neon/edgert_kernels.h for the byte layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.errors import EdgertError

TILE = 32
UNIFORM_BITS = (1, 2, 3, 4)
HLQ_BITS = (2, 3, 4)
#: uniform widths the format and kernels take: also 5 and 6, for llama.cpp's Q5_* and Q6_K
#: imported as they are (``compile --bits keep``); the quantizers offer :data:`UNIFORM_BITS`
FORMAT_UNIFORM_BITS = (1, 2, 3, 4, 5, 6)
#: group sizes the quantizers offer (``--group-size``)
GROUP_SIZES = (32, 64, 128)
#: group sizes the format and kernels take: also 16, the sub-blocks of llama.cpp's Q2_K and Q3_K
#: imported as they are (``compile --bits keep``); never offered to the quantizers, whose
#: float16 scale and zero would cost 2 bits per weight at that size
FORMAT_GROUP_SIZES = (16, *GROUP_SIZES)
FMT_CODE = {"uniform": 0, "hlq": 1}
#: or'ed into the kernels' format code: the weight's zero (HLQ: beta) buffer is one [32], row r's
#: value at r % 32 for every tile and group (EDGERT_FMT_SHARED_ZERO in kernels_neon/edgert_kernels.h)
SHARED_ZERO = 4


def kernel_format(fmt: str, zero: np.ndarray) -> int:
    """The C kernels' format code for a weight in ``fmt`` whose zero (or beta) buffer is ``zero``."""
    return FMT_CODE[fmt] | (SHARED_ZERO if zero.size == TILE else 0)


def bits_per_weight(fmt: str, bits: int, group_size: int) -> float:
    """Stored bits per weight: the code plus the group's float16 parameters (uniform: scale and
    zero; HLQ: one scale per bit-plane and an offset), before padding to whole tiles."""
    return bits + 16 * (2 if fmt == "uniform" else bits + 1) / group_size


def check_format(fmt: str, bits: int, group_size: int) -> None:
    ok = FORMAT_UNIFORM_BITS if fmt == "uniform" else HLQ_BITS
    if fmt not in FMT_CODE:
        raise EdgertError(f"unknown weight format {fmt!r}", "use uniform or hlq")
    if bits not in ok:
        raise EdgertError(f"{fmt} weights support {ok} bits, not {bits}")
    if group_size not in FORMAT_GROUP_SIZES:
        raise EdgertError(
            f"group size {group_size} is not supported", f"use one of {FORMAT_GROUP_SIZES}"
        )


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
    def shared_zero(self) -> bool:
        """The zero (HLQ: beta) is one [32] shared by every tile and group (:data:`SHARED_ZERO`)."""
        return self.zero.size == TILE

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

    def affine(self):
        """A uniform weight as :class:`edgert.format.bundles.Affine` (codes and float16 scale and
        zero per row and group, the same numbers)."""
        from edgert.format.bundles import Affine

        if self.fmt != "uniform":
            raise ValueError("only uniform weights are affine in their codes")
        half = lambda a: a.astype(np.float16)  # float16 again, exactly
        scale, zero = self._rows(self.scale), self._zeros()
        return Affine(self.codes(), half(scale), half(zero), self.group_size)

    def _zeros(self) -> np.ndarray:
        """The zero (HLQ: beta) per row and group, (m, G) float32, shared or not."""
        if not self.shared_zero:
            return self._rows(self.zero)
        lane = self.zero.reshape(TILE).view(np.float16).astype(np.float32)
        rows = lane[np.arange(self.shape[0]) % TILE]
        return np.repeat(rows[:, None], self.groups, axis=1)

    def dequantize(self) -> np.ndarray:
        """The float32 weights (m, k), a few row tiles at a time (a large matrix's temporaries
        stay small)."""
        m, k = self.shape
        step = max(1, (1 << 22) // (TILE * k))  # tiles per chunk: 4M values
        if self.planes.shape[0] <= step:
            return self._dequantize()
        out = np.empty((m, k), np.float32)
        for t in range(0, self.planes.shape[0], step):
            part = self.tiles(t, t + step)
            out[t * TILE : t * TILE + part.shape[0]] = part._dequantize()
        return out

    def tiles(self, t0: int, t1: int) -> PackedWeight:
        """Row tiles t0:t1 (rows 32 t0 up to 32 t1) as a weight of their own, views of these
        buffers."""
        m, k = self.shape
        rows = max(0, min(m, t1 * TILE) - t0 * TILE)
        return dataclasses.replace(self, shape=(rows, k), planes=self.planes[t0:t1],
                                   scale=self.scale[t0:t1],
                                   zero=self.zero if self.shared_zero else self.zero[t0:t1])  # fmt: skip

    def dequantize_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of :meth:`dequantize`, from their tiles alone (a slice of a large head)."""
        t0 = r0 // TILE
        return self.tiles(t0, -(-r1 // TILE)).dequantize()[r0 - t0 * TILE : r1 - t0 * TILE]

    def _dequantize(self) -> np.ndarray:
        m, k = self.shape
        g = self.group_size
        q = self.codes()
        qp = np.zeros((m, self.groups * g), np.float32)
        qp[:, :k] = q
        qg = qp.reshape(m, self.groups, g)
        zero = self._zeros()  # (m, G)
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
    for j in range(bits):
        bit = (q >> j) & 1
        nib = bit[..., 0] | (bit[..., 1] << 1) | (bit[..., 2] << 2) | (bit[..., 3] << 3)
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
    codes: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    *,
    bits: int,
    group_size: int,
    share: bool = True,
) -> PackedWeight:
    """Pack codes (m, k) with per-group scales/zeros (m, G): w = scale * (code - zero). With
    ``share``, zeros that are one float16 value wherever the scale is not 0 (where it is, w is 0
    whatever the zero) are stored once (:data:`SHARED_ZERO`)."""
    check_format("uniform", bits, group_size)
    codes = _validate_codes(codes, bits)
    m, k = codes.shape
    G = -(-k // group_size)
    for name, a in (("scales", scales), ("zeros", zeros)):
        if np.shape(a) != (m, G):
            raise EdgertError(f"{name} must have shape {(m, G)}, got {np.shape(a)}")
    m_pad = -(-m // TILE) * TILE
    pw = PackedWeight(
        "uniform",
        bits,
        group_size,
        (m, k),
        pack_planes(codes, bits, group_size),
        _tile_params(scales, m_pad),
        _tile_params(zeros, m_pad),
    )
    return with_shared_zero(pw) if share else pw


def with_shared_zero(pw: PackedWeight) -> PackedWeight:
    """A uniform weight whose zeros are one float16 value wherever its float16 scale is not 0
    (where it is, w is 0 whatever the zero) with that zero stored once (:data:`SHARED_ZERO`);
    any other weight as it is."""
    if pw.fmt != "uniform" or pw.shared_zero:
        return pw
    live = (pw.scale & 0x7FFF) != 0  # float16 bits: +0 and -0 are 0, NaN is not
    values = np.unique(pw.zero[live])  # by bits: -0 and NaN are not 0
    if values.size > 1:
        return pw
    value = values[0] if values.size else np.uint16(0)
    return dataclasses.replace(pw, zero=np.full((1, 1, TILE), value, np.uint16))


def pack_hlq(
    codes: np.ndarray, plane_scales: np.ndarray, offsets: np.ndarray, *, bits: int, group_size: int
) -> PackedWeight:
    """Pack codes (m, k) with per-plane scales (m, G, bits) and offsets (m, G)."""
    check_format("hlq", bits, group_size)
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


def random_packed(
    m: int, k: int, *, bits: int, group_size: int, fmt: str = "uniform", seed: int = 0
) -> PackedWeight:
    """A weight of the given shape and format with random codes and parameters: what the
    kernels' speed is measured on (their work does not depend on the values)."""
    check_format(fmt, bits, group_size)
    rng = np.random.default_rng(seed)
    G = -(-k // group_size)
    codes = rng.integers(0, 1 << bits, size=(m, k))
    if fmt == "uniform":
        scale = rng.uniform(0.01, 0.02, size=(m, G)).astype(np.float32)
        zero = np.full((m, G), (1 << bits) / 2, np.float32)
        # a zero per group, as the quantizers write (a symmetric import shares one)
        return pack_uniform(codes, scale, zero, bits=bits, group_size=group_size, share=False)
    alpha = rng.uniform(0.01, 0.02, size=(m, G, bits)) * (1 << np.arange(bits))
    beta = rng.uniform(-0.02, 0.0, size=(m, G))
    return pack_hlq(codes, alpha, beta, bits=bits, group_size=group_size)
