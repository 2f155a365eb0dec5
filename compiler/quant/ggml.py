"""llama.cpp's quantized tensors imported as they are (``compile --bits keep``): no second
rounding of a GGUF whose quantization was made with care (an importance matrix, K-quant mixes).

Every GGML type whose blocks are affine per group, w = s * c + o with integer codes c, maps onto a
LUT format exactly up to the float16 the format stores its group parameters in:

========  ====================================================  ==========================
type      block                                                 edgert
========  ====================================================  ==========================
Q4_0      32: w = d (q - 8)                                     uniform 4-bit, group 32
Q4_1      32: w = d q + m                                       uniform 4-bit, group 32
Q4_K      256: 8 x 32, w = d sc_j q - dmin m_j (6-bit sc, m)    uniform 4-bit, group 32
Q2_K      256: 16 x 16, w = d sc_j q - dmin m_j (4-bit sc, m)   uniform 2-bit, group 16
Q3_K      256: 16 x 16, w = d (sc_j - 32) (q - 4) (6-bit sc)    uniform 3-bit, group 16
Q5_0      32: w = d (q - 16)                                    uniform 5-bit, group 32
Q5_1      32: w = d q + m                                       uniform 5-bit, group 32
Q5_K      256: 8 x 32, w = d sc_j q - dmin m_j (as Q4_K)        uniform 5-bit, group 32
Q6_K      256: 16 x 16, w = d sc_j (q - 32) (int8 sc)           uniform 6-bit, group 16
TQ1_0     256: w = d t, t in {-1, 0, 1} (ternary, base 3)       uniform 2-bit, group 128
TQ2_0     256: w = d t, t in {-1, 0, 1} (ternary, 2 bits)       uniform 2-bit, group 128
Q8_0      32: w = d q, q int8                                   8-bit rows (q8)
IQ4_NL    32: w = d kvalues[q] (a fixed int8 codebook)          8-bit rows (q8)
IQ4_XS    256: 8 x 32, w = d (ls_j - 32) kvalues[q] (6-bit ls)  8-bit rows (q8)
========  ====================================================  ==========================

The uniform format stores w = scale (c - zero) with float16 scale and zero: scale = s rounded
once to float16, zero = -o / scale rounded once (so that scale * zero stays o), or the integer
-o / s is where it is one (Q4_0's 8, Q5_0's 16, Q3_K's 4, Q6_K's 32; Q4_0 and Q5_0 are then bit
for bit, their scale being the block's own float16 d). The q8 format stores int8 codes with a float32 scale per 32, so the
last three are exact (IQ4_XS: the int8 code is the codebook's value, the scale d (ls - 32)). Other types (float, the other IQ types) are rounded once more, to 8-bit rows,
and counted apart; so is an embedding table of a LUT type, which is read by rows.
"""

from __future__ import annotations

import numpy as np

from edgert.errors import EdgertError
from edgert.format.lut import TILE, PackedWeight, pack_uniform, with_shared_zero
from edgert.format.q8 import quantize_q8

#: type -> (bits, group size) of the uniform LUT format holding it exactly
LUT_TYPES = {"Q4_0": (4, 32), "Q4_1": (4, 32), "Q4_K": (4, 32), "Q2_K": (2, 16), "Q3_K": (3, 16),
             "Q5_0": (5, 32), "Q5_1": (5, 32), "Q5_K": (5, 32), "Q6_K": (6, 16),
             "TQ1_0": (2, 128), "TQ2_0": (2, 128)}  # fmt: skip
#: types the 8-bit rows hold exactly: int8 codes times the block's float16 d, blocks of 32 (Q4_0
#: and Q5_0 too, for the embedding table, which is always 8-bit rows)
Q8_TYPES = ("Q8_0", "IQ4_NL", "IQ4_XS", "Q4_0", "Q5_0")
#: values a LUT import takes at a time (whole row tiles): a Llama-3-8B-sized Q4_0 head is 525 M
#: weights, whose codes and packing temporaries would take GBs at once
LUT_IMPORT_VALUES = 1 << 24
#: blocks of 32 an 8-bit import dequantizes at a time (4M values): a Llama-3-8B-sized Q4_0
#: embedding table is 2.1 GB in float32, which the import never holds
Q8_IMPORT_BLOCKS = 1 << 17
#: bytes per block and weights per block of the types read here
BLOCKS = {
    "Q4_0": (18, 32),
    "Q4_1": (20, 32),
    "Q4_K": (144, 256),
    "Q2_K": (84, 256),
    "Q3_K": (110, 256),
    "Q5_0": (22, 32),
    "Q5_1": (24, 32),
    "Q5_K": (176, 256),
    "Q6_K": (210, 256),
    "TQ1_0": (54, 256),
    "TQ2_0": (66, 256),
    "Q8_0": (34, 32),
    "IQ4_NL": (18, 32),
    "IQ4_XS": (136, 256),
}
#: IQ4_NL / IQ4_XS's codebook (llama.cpp's kvalues_iq4nl)
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      np.int8)  # fmt: skip


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes per row (..., 2) uint8 -> float32 (...)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(nb, 16 * j) bytes -> (nb, 32 * j) codes: per 16 bytes, the low nibbles then the high."""
    q = qs.reshape(qs.shape[0], -1, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 15).reshape(qs.shape[0], -1)


def _k4_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes of 6-bit scales and mins -> (nb, 8) each."""
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([a & 63, (c & 15) | ((a >> 2) & 48)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 2) & 48)], axis=1)
    return scale.astype(np.float32), mins.astype(np.float32)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0 / Q5_1's 32-bit high-bit word (nb, 4) bytes -> (nb, 32): bit i of weight i."""
    return ((qh.reshape(-1, 4, 1) >> np.arange(8, dtype=np.uint8)) & 1).reshape(-1, 32)


def _k3_scales(sc: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes of 6-bit signed scales -> (nb, 16) int values (sc - 32)."""
    nb = sc.shape[0]
    lo = (sc[:, :8].reshape(nb, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)) & 15
    hi = (sc[:, 8:12].reshape(nb, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
    return (lo.reshape(nb, 16) | (hi.reshape(nb, 16) << 4)).astype(np.float32) - 32


def _crumbs(qs: np.ndarray, width: int) -> np.ndarray:
    """(nb, 32 * j) bytes -> (nb, 8 / width * 32 * j) codes: per 32 bytes, bits 0.. of each byte,
    then the next ``width`` bits (llama.cpp's K-quant order)."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)
    q = qs.reshape(qs.shape[0], -1, 1, 32) >> shifts.reshape(1, 1, -1, 1)
    return (q & ((1 << width) - 1)).reshape(qs.shape[0], -1)


def affine_blocks(kind: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks (nb, block bytes) of a LUT type -> codes (nb, n) uint8, and per group the slope s
    and offset o (nb, groups) float32 with w = s * code + o, as llama.cpp dequantizes them."""
    nb = blocks.shape[0]
    if kind == "Q4_0":
        d = _f16(blocks[:, 0:2])[:, None]
        return _nibbles(blocks[:, 2:]), d, -8 * d
    if kind == "Q4_1":
        return _nibbles(blocks[:, 4:]), _f16(blocks[:, 0:2])[:, None], _f16(blocks[:, 2:4])[:, None]
    if kind == "Q5_0":
        d = _f16(blocks[:, 0:2])[:, None]
        return _nibbles(blocks[:, 6:]) | (_high_bits(blocks[:, 2:6]) << 4), d, -16 * d
    if kind == "Q5_1":
        codes = _nibbles(blocks[:, 8:]) | (_high_bits(blocks[:, 4:8]) << 4)
        return codes, _f16(blocks[:, 0:2])[:, None], _f16(blocks[:, 2:4])[:, None]
    if kind in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks[:, 0:2])[:, None], _f16(blocks[:, 2:4])[:, None]
        sc, mn = _k4_scales(blocks[:, 4:16])
        q = blocks[:, -128:].reshape(nb, 4, 32)
        codes = np.stack([q & 15, q >> 4], axis=2).reshape(nb, 256)  # 32 low, 32 high per 32 B
        if kind == "Q5_K":  # bit i of byte l: the fifth bit of weight 32 i + l
            qh = blocks[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(
                1, 8, 1
            )
            codes = codes | ((qh & 1).reshape(nb, 256) << 4)
        return codes, d * sc, -dmin * mn
    if kind == "Q6_K":  # low nibbles of 64 bytes per 128 weights, then 2 high bits per 32 bytes
        ql = blocks[:, 0:128].reshape(nb, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(
            1, 1, 2, 1
        )
        qh = blocks[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(
            1, 1, 4, 1
        )
        codes = ((ql & 15).reshape(nb, 256) | ((qh & 3).reshape(nb, 256) << 4)).astype(np.uint8)
        s = _f16(blocks[:, 208:210])[:, None] * blocks[:, 192:208].view(np.int8).astype(np.float32)
        return codes, s, -32 * s
    if kind == "Q2_K":
        sc = blocks[:, 0:16]
        d, dmin = _f16(blocks[:, 80:82])[:, None], _f16(blocks[:, 82:84])[:, None]
        return _crumbs(blocks[:, 16:80], 2), d * (sc & 15), -dmin * (sc >> 4)
    if kind == "Q3_K":
        hmask, ql = blocks[:, 0:32], _crumbs(blocks[:, 32:96], 2)
        high = (hmask.reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
        codes = ql | (high.reshape(nb, 256) << 2)  # q + 4: the mask bit set means q >= 0
        s = _f16(blocks[:, 108:110])[:, None] * _k3_scales(blocks[:, 96:108])
        return codes, s, -4 * s
    if kind in ("TQ1_0", "TQ2_0"):  # d times a trit: the trits from llama.cpp's dequantization
        d = _f16(blocks[:, -2:])[:, None]
        w = _dequantize(kind, blocks)
        t = np.divide(w, d, out=np.zeros_like(w), where=d != 0)
        codes = (np.rint(t) + 1).astype(np.uint8)
        d2 = np.repeat(d, 2, axis=1)  # two groups of 128 per block
        return codes, d2, -d2
    raise EdgertError(f"{kind} is not a LUT type")


def _dequantize(kind: str, blocks: np.ndarray) -> np.ndarray:
    """llama.cpp's dequantization of blocks (nb, block bytes) -> (nb, n) float32 (the gguf
    package's port)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(blocks, GGMLQuantizationType[kind]).reshape(blocks.shape[0], -1)


def _rows(kind: str, blocks: np.ndarray, k: int) -> np.ndarray:
    """Rows (m, bytes) of a tensor with k columns -> blocks (m * k / n, block bytes)."""
    size, n = BLOCKS[kind]
    if k % n or blocks.ndim != 2 or blocks.shape[1] != k // n * size:
        raise EdgertError(f"{kind} rows of {k} weights must be {k // n * size} bytes of blocks")
    return np.ascontiguousarray(blocks, np.uint8).reshape(-1, size)


def import_lut(kind: str, blocks: np.ndarray, k: int) -> PackedWeight:
    """A (m, k) matrix stored as ``kind`` rows (m, bytes) -> the uniform LUT weight equal to
    llama.cpp's dequantization within the float16 rounding of its composed group parameters.
    A large matrix goes a few row tiles at a time (:data:`LUT_IMPORT_VALUES`)."""
    m = blocks.shape[0]
    step = max(TILE, LUT_IMPORT_VALUES // k // TILE * TILE)
    if m <= step:
        return with_shared_zero(_import_lut(kind, blocks, k))
    parts = [_import_lut(kind, blocks[r : r + step], k) for r in range(0, m, step)]
    buffers = {
        n: np.concatenate([getattr(p, n) for p in parts]) for n in ("planes", "scale", "zero")
    }
    return with_shared_zero(PackedWeight.from_buffers({**parts[0].meta, "m": m}, buffers))


def _import_lut(kind: str, blocks: np.ndarray, k: int) -> PackedWeight:
    bits, group = LUT_TYPES[kind]
    m = blocks.shape[0]
    codes, s, o = affine_blocks(kind, _rows(kind, blocks, k))
    s, o = s.reshape(m, -1), o.reshape(m, -1)
    scale = s.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exact = -o / s  # Q4_0's 8, Q5_0's 16, Q3_K's 4, Q6_K's 32: integers, kept as they are
        zero = np.where(exact == np.rint(exact), exact, -o / scale).astype(np.float16)
    # a group without slope (s = 0), or whose offset float16 cannot express against it
    # (|o / s| > 65504): every weight is o within float16 rounding; code 0 at scale o, zero -1
    flat = ~np.isfinite(zero)
    scale = np.where(flat, o, scale)
    zero = np.where(flat, np.float16(-1), zero).astype(np.float32)
    codes = codes.reshape(m, -1, group)
    codes[flat] = 0
    return pack_uniform(codes.reshape(m, k), scale, zero, bits=bits, group_size=group, share=False)


def import_q8(kind: str, blocks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """A (m, k) matrix of an exact 8-bit type -> the q8 format's buffers (int8 q, float32 scale
    per 32), equal to llama.cpp's dequantization."""
    m = blocks.shape[0]
    raw = _rows(kind, blocks, k)
    if kind == "IQ4_XS":  # per 32: d (ls - 32) times the codebook's int8 value
        nb = raw.shape[0]
        hi = (raw[:, 2:4].copy().view(np.uint16) >> (2 * np.arange(8, dtype=np.uint16))) & 3
        lo = ((raw[:, 4:8, None] >> np.array([0, 4], np.uint8)) & 15).reshape(nb, 8)
        scale = _f16(raw[:, 0:2])[:, None] * (
            (lo | (hi.astype(np.uint8) << 4)).astype(np.float32) - 32
        )
        q = IQ4_VALUES[_nibbles(raw[:, 8:])]
        return {"q": q.reshape(m, k), "scale": scale.reshape(m, k // 32)}
    d = _f16(raw[:, 0:2])  # the other Q8 types' blocks start with their float16 d
    q = np.empty((raw.shape[0], 32), np.int8)
    for b in range(0, raw.shape[0], Q8_IMPORT_BLOCKS):
        w = _dequantize(kind, raw[b : b + Q8_IMPORT_BLOCKS]).reshape(-1, 32)  # d * q, exact
        db = d[b : b + Q8_IMPORT_BLOCKS, None]
        q[b : b + Q8_IMPORT_BLOCKS] = np.rint(np.divide(w, db, out=np.zeros_like(w), where=db != 0))
    return {"q": q.reshape(m, k), "scale": d.reshape(m, k // 32)}


class KeptWeights:
    """The ``quantizer`` of a ``--bits keep`` compile (edgert.compiler.package.write_artifact):
    each tensor in the form :meth:`form` gives it, from the model's stored blocks. ``counts``:
    tensors by how they were taken (``Q4_K``, ``Q6_K -> 8-bit``) for the manifest."""

    method = "keep"
    stats = None

    def __init__(self, model):
        self.model = model
        self.counts: dict[str, int] = {}

    def check(self, linear: list[str]) -> None:
        """Refuse a model none of whose ``linear`` weights is stored in a type kept as it is."""
        types = {self.model.infos[n].source_type for n in linear}
        if not types & (set(LUT_TYPES) | set(Q8_TYPES)):
            raise EdgertError(
                f"{self.model.source}: its linear weights are {', '.join(sorted(types))}; "
                f"--bits keep keeps {', '.join(sorted({*LUT_TYPES, *Q8_TYPES}))}",
                "use --bits N to quantize it",
            )

    def form(self, name: str) -> tuple[str, int]:
        """("lut" | "q8", bits) of tensor ``name`` (stacked experts: each expert's)."""
        kind = self.model.infos[name].source_type
        if kind in LUT_TYPES:
            return "lut", LUT_TYPES[kind][0]
        return "q8", 8

    def needs_values(self, name: str) -> bool:
        """Whether tensor ``name`` is rounded from its float values: only where its type is
        kept neither as LUT weights nor as 8-bit rows (the rest takes the stored blocks)."""
        kind = self.model.infos[name].source_type
        return kind not in LUT_TYPES and kind not in Q8_TYPES

    def __call__(self, name: str, w: np.ndarray, bits: int, *, expert: int | None = None,
                 keep: bool = False) -> PackedWeight | dict[str, np.ndarray]:  # fmt: skip
        """Linear weight ``name`` (``w``: its float values, the expert's when ``expert`` is
        given; ``bits`` is the plan's, which :meth:`form` made): the LUT format where the type
        maps onto one, else 8-bit rows."""
        kind = self.model.infos[name].source_type
        if kind not in LUT_TYPES:
            return self.rows8(name, w, expert=expert)
        return import_lut(kind, self._rows(name, w, expert), w.shape[-1])

    def rows8(self, name: str, w: np.ndarray, *, expert: int | None = None) -> dict:
        """Tensor ``name`` as 8-bit rows: exact from a Q8 type, else rounded from ``w``."""
        kind = self.model.infos[name].source_type
        if kind in Q8_TYPES:
            return import_q8(kind, self._rows(name, w, expert), w.shape[-1])
        label = f"{kind} -> 8-bit"
        self.counts[label] = self.counts.get(label, 0) + 1
        return quantize_q8(w)

    def _rows(self, name: str, w: np.ndarray, expert: int | None) -> np.ndarray:
        kind = self.model.infos[name].source_type
        self.counts[kind] = self.counts.get(kind, 0) + 1
        rows = self.model.stored_blocks(name)
        if expert is not None:  # stacked experts: the rows of one matrix after another
            rows = rows[expert * w.shape[0] : (expert + 1) * w.shape[0]]
        return rows


# -- writing K-quant blocks (synthetic models in llama.cpp's types: tools/make_synthetic_gguf) --
def _as_f16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8).reshape(-1, 2)


def _sub_ranges(x: np.ndarray, n: int, levels: int, top: int):
    """Sub-blocks of n weights (nb, 256 / n, n): per sub-block an unsigned scale and min (w =
    scale q - min, min >= 0 as llama.cpp keeps it), each a ``top``-level integer times the
    super-block's float16 d / dmin. Returns (d, dmin, sc, mn, q)."""
    g = x.reshape(x.shape[0], -1, n)
    lo = np.minimum(g.min(-1), 0)
    scale = (g.max(-1) - lo) / levels
    d = (scale.max(-1) / top).astype(np.float16).astype(np.float32)
    dmin = (-lo.min(-1) / top).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.rint(np.nan_to_num(scale / d[:, None])), 0, top)
        mn = np.clip(np.rint(np.nan_to_num(-lo / dmin[:, None])), 0, top)
        step = (d[:, None] * sc)[..., None]
        q = np.nan_to_num((g + (dmin[:, None] * mn)[..., None]) / step)
    q = np.clip(np.rint(q), 0, levels).astype(np.uint8)
    return d, dmin, sc.astype(np.uint8), mn.astype(np.uint8), q.reshape(x.shape[0], -1)


def _pack_crumbs(c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_crumbs` at width 2: (nb, 256) codes < 4 -> (nb, 64) bytes."""
    c = c.reshape(c.shape[0], 2, 4, 32).astype(np.uint8)
    return (
        (c << np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1))
        .sum(2, dtype=np.uint8)
        .reshape(c.shape[0], 64)
    )


def encode_blocks(kind: str, w: np.ndarray) -> np.ndarray:
    """Rows (m, k) of floats -> rows (m, bytes) of ``kind`` blocks (Q2_K, Q3_K, Q4_K) by plain
    rounding per sub-block (no search, no importance: for synthetic models, not for quality)."""
    w = np.asarray(w, np.float32)
    m, k = w.shape
    if kind not in ("Q2_K", "Q3_K", "Q4_K") or k % 256:
        raise EdgertError(f"cannot write {kind} rows of {k} weights")
    x = w.reshape(-1, 256)
    nb = x.shape[0]
    if kind == "Q4_K":
        d, dmin, sc, mn, q = _sub_ranges(x, 32, 15, 63)
        hi4, hm4 = sc[:, 4:] >> 4, mn[:, 4:] >> 4
        scales = np.concatenate(
            [
                sc[:, :4] | (hi4 << 6),
                mn[:, :4] | (hm4 << 6),
                (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4),
            ],
            axis=1,
        )
        qq = q.reshape(nb, 4, 2, 32)
        qs = (qq[:, :, 0] | (qq[:, :, 1] << 4)).reshape(nb, 128)
        out = [_as_f16_bytes(d), _as_f16_bytes(dmin), scales, qs]
    elif kind == "Q2_K":
        d, dmin, sc, mn, q = _sub_ranges(x, 16, 3, 15)
        out = [sc | (mn << 4), _pack_crumbs(q), _as_f16_bytes(d), _as_f16_bytes(dmin)]
    else:  # Q3_K: w = d (u - 32) (c - 4), the extreme weight of a sub-block at code 0 (q = -4)
        g = x.reshape(nb, 16, 16)
        ext = np.take_along_axis(g, np.abs(g).argmax(-1)[..., None], -1)[..., 0]
        scale = -ext / 4
        d = (np.abs(scale).max(-1) / 32).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.clip(np.rint(np.nan_to_num(scale / d[:, None])), -32, 31)
            q = np.nan_to_num(g / (d[:, None] * u)[..., None])
        c = (np.clip(np.rint(q), -4, 3) + 4).astype(np.uint8).reshape(nb, 256)
        u = (u + 32).astype(np.uint8)
        low = (u[:, :8] & 15) | ((u[:, 8:] & 15) << 4)
        high = ((u >> 4) & 3).reshape(nb, 4, 4) << np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)
        hmask = ((c >> 2).reshape(nb, 8, 32) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)).sum(
            1, dtype=np.uint8
        )
        out = [hmask, _pack_crumbs(c & 3), low, high.sum(1, dtype=np.uint8), _as_f16_bytes(d)]
    return np.concatenate(out, axis=1).reshape(m, -1)
