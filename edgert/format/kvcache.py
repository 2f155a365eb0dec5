"""How the KV cache holds keys and values (``--kv-cache``): the row formats of the C forward pass
(``kernels_neon/edgert_forward.h``, ``EDGERT_KV_*``), their sizes for the DRAM plan, and the same
rounding in numpy for the reference engine and the tests.

A row is one position's ``n_kv_heads * head_dim`` values. ``f32`` keeps them; ``f16`` rounds each
to float16; ``q8`` and ``q4`` go by blocks of :data:`BLOCK` values of one head (per token, per
head), each block with float16 scales: q8 ``x = d * q`` with int8 q and d = max|x| / 127 (34 bytes
a block), q4 ``x = d * q + m`` with 4-bit q, m = min x, d = (max x - min x) / 15 (20 bytes). Codes
round to nearest, ties to even, after d and m are rounded to float16. These rows hold each block
rotated (:func:`rotate`, an orthonormal Walsh-Hadamard transform): it spreads the channels that
are large in every token (keys after the rotary embedding have a few) over their block, so that
one scale per block fits all of its values; attention scores rotated queries against the rotated
keys and rotates its sum of rotated values back.

q4 keys go by channel instead (:func:`encode_key_group`): positions in groups of
:data:`KEY_GROUP`, each channel of a complete group quantized over the group's positions (the
same 4-bit codes, one float16 scale and minimum per channel and group, unrotated), the positions
of the group not yet complete kept in float16; a query reads the groups complete at its position
quantized and later keys in float16 (:func:`keys_seen`). Even rotated, one scale per token's
block spans the large channels badly (SmolLM2 +5.0% perplexity at ctx 2048 with q4 rows for
keys); one channel varies little over neighbouring positions."""

from __future__ import annotations

import numpy as np

from edgert.errors import EdgertError

#: the C forward pass's EDGERT_KV_* codes
TYPES = {"f32": 0, "f16": 1, "q8": 2, "q4": 3}
#: values per block of the quantized types (within one head)
BLOCK = 32
#: positions per group of q4 keys
KEY_GROUP = 64
_BLOCK_BYTES = {"q8": 2 + BLOCK, "q4": 4 + BLOCK // 2}
#: what the default cache holds
DEFAULT = ("f32", "f32")


def parse(spec: str | None) -> tuple[str, str]:
    """``TYPE`` (keys and values) or ``KTYPE,VTYPE`` -> (keys, values); None: the default."""
    if spec is None:
        return DEFAULT
    parts = [p.strip().lower() for p in str(spec).split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p not in TYPES for p in parts):
        raise EdgertError(
            f"--kv-cache {spec!r}: not a cache type",
            f"write one of {', '.join(TYPES)} (keys and values), or KEYS,VALUES such as q8,q4",
        )
    return parts[0], parts[1]


#: the types a budget's plan falls back to where --kv-cache is not given, most precise first
#: (their perplexity cost on SmolLM2 at ctx 2048, BENCHMARKS.md "KV cache types": f16 +0.10%, q8
#: +0.10%; q8,q4 +0.31% and q4 +1.8% only when asked for)
AUTO = (("f32", "f32"), ("f16", "f16"), ("q8", "q8"))


def choose(make, head_dim: int):
    """``(types, plan)`` for a budget where no type was asked for: float32 where the budget holds
    its plan, else the first of :data:`AUTO` it holds (a budget too tight for a float32 cache runs
    with a smaller one rather than being refused; one that holds float32 keeps it, so the tokens
    are the unbudgeted run's). ``make(types)`` returns the plan or raises :class:`EdgertError`
    for a budget below its minimum; where every type is refused, the last refusal (the smallest
    minimum) is raised."""
    refused = None
    for kv in AUTO:
        if any(k in _BLOCK_BYTES for k in kv) and head_dim % BLOCK:
            continue
        try:
            return kv, make(kv)
        except EdgertError as e:
            refused = e
    raise refused


def name(kv: tuple[str, str]) -> str:
    """``q8`` for (q8, q8), ``q8,q4`` otherwise: what :func:`parse` reads back."""
    return kv[0] if kv[0] == kv[1] else f"{kv[0]},{kv[1]}"


def row_bytes(kind: str, n: int) -> int:
    """Bytes of a row of ``n`` values."""
    if kind == "f32":
        return 4 * n
    if kind == "f16":
        return 2 * n
    if n % BLOCK:
        raise EdgertError(f"a {kind} KV cache goes by blocks of {BLOCK} values; a row has {n}")
    return n // BLOCK * _BLOCK_BYTES[kind]


def key_row_bytes(kind: str, n: int) -> int:
    """Bytes per position of a key cache of rows of ``n`` values: q4 keys' groups of
    :data:`KEY_GROUP` positions take as many bytes as that many positions (per head and position
    head_dim / 2 bytes of codes, and per group 4 head_dim bytes of scales and minimums)."""
    if kind != "q4":
        return row_bytes(kind, n)
    row_bytes(kind, n)  # the same refusal for heads that are not whole blocks
    return n // 2 + 4 * n // KEY_GROUP


def key_tail_bytes(kind: str, n: int) -> int:
    """Bytes of a layer's float16 rows of the q4 key group not yet complete (0 for the rest)."""
    return 2 * KEY_GROUP * n if kind == "q4" else 0


def check_heads(kv: tuple[str, str], head_dim: int) -> None:
    """Refuse quantized types for heads that are not whole blocks."""
    for kind in kv:
        if kind in _BLOCK_BYTES and head_dim % BLOCK:
            raise EdgertError(
                f"--kv-cache {kind}: this model's heads have {head_dim} values, not a multiple "
                f"of the {BLOCK}-value blocks a quantized cache keeps per head",
                "use --kv-cache f16 (or f32)",
            )


def rotate(x: np.ndarray) -> np.ndarray:
    """Each block of :data:`BLOCK` values along the last axis of ``x`` (float32) replaced by its
    orthonormal Walsh-Hadamard transform, its own inverse: butterflies (a, b) -> (a + b, a - b)
    over pairs 1, 2, 4, 8 and 16 apart, then times 1 / sqrt(32), as the C side's
    ``edgert_kv_rotate`` (bit for bit)."""
    x = np.asarray(x, np.float32)
    lead, n = x.shape[:-1], x.shape[-1]
    y = x.reshape(-1, BLOCK)
    h = 1
    while h < BLOCK:
        p = y.reshape(-1, BLOCK // (2 * h), 2, h)
        a, b = p[:, :, 0], p[:, :, 1]
        y = np.stack([a + b, a - b], 2).reshape(-1, BLOCK)
        h *= 2
    return (y * np.float32(1.0 / np.sqrt(BLOCK))).reshape(*lead, n)


def _rint(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.float32)  # ties to even, as the C side's round_even


def encode(kind: str, x: np.ndarray) -> np.ndarray:
    """The rows ``x`` (..., n) float32 in ``kind``'s layout, as bytes (..., row_bytes)."""
    x = np.ascontiguousarray(x, np.float32)
    lead, n = x.shape[:-1], x.shape[-1]
    if kind == "f32":
        return x.view(np.uint8).reshape(*lead, 4 * n)
    if kind == "f16":
        return x.astype(np.float16).view(np.uint8).reshape(*lead, 2 * n)
    b = rotate(x).reshape(*lead, n // BLOCK, BLOCK)
    if kind == "q8":
        d = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float16)
        df = d.astype(np.float32)
        inv = np.divide(np.float32(1), df, out=np.zeros_like(df), where=df != 0)
        q = np.clip(_rint(b * inv), -127, 127).astype(np.int8)
        out = np.concatenate([d.view(np.uint8), q.view(np.uint8)], -1)
    else:
        d, m, q = _q4(b, -1)
        nib = q[..., 0::2] | (q[..., 1::2] << 4)
        out = np.concatenate([d.view(np.uint8), m.view(np.uint8), nib], -1)
    return out.reshape(*lead, -1)


def _q4(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q4 over ``axis`` of x: float16 scale d = (max - min) / 15 and minimum m (the axis kept,
    length 1), and the uint8 codes of (x - m) / d, to nearest, ties to even, in 0 .. 15."""
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    d = ((hi - lo) / np.float32(15)).astype(np.float16)
    m = lo.astype(np.float16)
    df, mf = d.astype(np.float32), m.astype(np.float32)
    inv = np.divide(np.float32(1), df, out=np.zeros_like(df), where=df != 0)
    return d, m, np.clip(_rint((x - mf) * inv), 0, 15).astype(np.uint8)


def decode(kind: str, rows: np.ndarray, n: int) -> np.ndarray:
    """The float32 values (..., n) of rows in ``kind``'s layout (bytes (..., row_bytes)) as they
    are held: a quantized type's blocks rotated (:func:`round_trip` rotates them back)."""
    rows = np.ascontiguousarray(rows, np.uint8)
    lead = rows.shape[:-1]
    if kind == "f32":
        return rows.view(np.float32).reshape(*lead, n)
    if kind == "f16":
        return rows.view(np.float16).astype(np.float32).reshape(*lead, n)
    b = rows.reshape(*lead, n // BLOCK, _BLOCK_BYTES[kind])
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16).astype(np.float32)
    if kind == "q8":
        q = np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.float32)
        return (d * q).reshape(*lead, n)
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16).astype(np.float32)
    nib = b[..., 4:]
    q = np.stack([nib & 15, nib >> 4], -1).reshape(*lead, n // BLOCK, BLOCK).astype(np.float32)
    return (d * q + m).reshape(*lead, n)


def round_trip(kind: str, x: np.ndarray) -> np.ndarray:
    """``x`` (..., n) as the cache gives it back: what attention reads after storing it (a
    quantized type's blocks rotated back)."""
    if kind == "f32":
        return np.asarray(x, np.float32)
    y = decode(kind, encode(kind, x), x.shape[-1])
    return rotate(y) if kind in _BLOCK_BYTES else y


def encode_key_group(x: np.ndarray) -> np.ndarray:
    """A complete group of q4 keys, ``x`` (KEY_GROUP, heads, hd) float32, as the cache's bytes
    (heads, 4 hd + KEY_GROUP hd / 2): per KV head, hd float16 scales, hd float16 minimums, then each
    position's hd 4-bit codes (channel 2j in byte j's low nibble). The keys are rounded to float16
    first, as the group's positions are held until it is complete."""
    x = np.asarray(x, np.float32).astype(np.float16).astype(np.float32)
    heads = x.shape[1]
    d, m, q = _q4(x, 0)  # d, m (1, heads, hd) over the group's positions; q (group, heads, hd)
    nib = (q[..., 0::2] | (q[..., 1::2] << 4)).transpose(1, 0, 2).reshape(heads, -1)
    return np.concatenate([d[0].view(np.uint8), m[0].view(np.uint8), nib], -1)


def decode_key_group(b: np.ndarray, hd: int) -> np.ndarray:
    """The keys (KEY_GROUP, heads, hd) float32 of a group's bytes (:func:`encode_key_group`)."""
    b = np.ascontiguousarray(b, np.uint8)
    heads = b.shape[0]
    d = np.ascontiguousarray(b[:, : 2 * hd]).view(np.float16).astype(np.float32)
    m = np.ascontiguousarray(b[:, 2 * hd : 4 * hd]).view(np.float16).astype(np.float32)
    nib = b[:, 4 * hd :].reshape(heads, KEY_GROUP, hd // 2)
    q = np.stack([nib & 15, nib >> 4], -1).reshape(heads, KEY_GROUP, hd).astype(np.float32)
    return (d[:, None] * q + m[:, None]).transpose(1, 0, 2)


def round_trip_key_group(x: np.ndarray) -> np.ndarray:
    """A complete group of q4 keys (KEY_GROUP, heads, hd) as attention reads it back."""
    return decode_key_group(encode_key_group(x), x.shape[-1])


def keys_seen(pos: np.ndarray) -> np.ndarray:
    """For queries at positions ``pos``: how many positions of q4 keys they read quantized (the
    groups complete at that position); keys from there on are read in float16."""
    return (np.asarray(pos) + 1) // KEY_GROUP * KEY_GROUP
