"""Neuron bundles: a dense FFN stored neuron by neuron for ``--sparse-ffn`` — neuron j's
up-projection row and down-projection column side by side (one read brings both) — and what the
manifest says of them (:class:`SparseSpec`).

Bundles hold the codes of the artifact's own quantization of the FFN, never a second rounding:
the up row keeps its groups along the model dimension (w = scale * (q - zero), float16 scale and
zero, as the LUT format's uniform weights); the down column's codes cut across the down
projection's groups, which run along the FFN, so its scales and zeros stay in a resident table
per (group of ``down_group`` neurons, output element) in the bundle index (see
edgert_forward.h). A bundle FFN over every neuron computes the dense FFN's weights exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgert.errors import EdgertError

#: bundle code widths (codes of other widths are stored in the next one: they stay whole per byte)
BUNDLE_BITS = (2, 4, 8)


@dataclass(frozen=True)
class BundleFormat:
    """Neuron j's bundle: up row codes then down column codes, ``dim_pad`` ``bits``-bit codes
    each, then the up row's float16 scale and zero per group of ``group``; the down column's scale
    and zero are those of the down projection's group of ``down_group`` neurons that j is in
    (the bundle index's ``down_scale`` / ``down_zero``, (groups of neurons, dim) per layer)."""

    dim: int
    bits: int
    group: int
    down_group: int

    @property
    def dim_pad(self) -> int:
        return -(-self.dim // self.group) * self.group

    @property
    def groups(self) -> int:
        return self.dim_pad // self.group

    @property
    def code_bytes(self) -> int:
        return self.dim_pad * self.bits // 8

    @property
    def nbytes(self) -> int:
        return 2 * self.code_bytes + 4 * self.groups

    def down_groups(self, ffn_dim: int) -> int:
        return -(-ffn_dim // self.down_group)

    @classmethod
    def for_bits(cls, dim: int, bits: int, group: int, down_group: int) -> BundleFormat:
        """The bundle width for codes of ``bits`` (1 -> 2, 3, 5, 6 -> 4 or 8)."""
        if bits > BUNDLE_BITS[-1]:
            raise EdgertError(f"neuron bundles hold codes of up to 8 bits, not {bits}")
        return cls(dim, next(b for b in BUNDLE_BITS if b >= bits), group, down_group)


@dataclass
class Affine:
    """A uniform weight as codes (m, k) and float16 scale and zero per (row, group of
    ``group`` columns): w = scale * (q - zero)."""

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    group: int


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    c = codes.reshape(codes.shape[0], -1, per).astype(np.uint16)
    out = np.zeros(c.shape[:2], np.uint16)
    for j in range(per):
        out |= c[..., j] << (bits * j)
    return out.astype(np.uint8)


def _unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * j)) & mask for j in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)


def pack_bundles(
    up: Affine, down: Affine, fmt: BundleFormat, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's up (f, dim) and down (dim, f) projections -> bundles (f, fmt.nbytes) uint8 in
    file order ``order`` (bundle p holds neuron order[p]), and the down projection's scale and
    zero as (groups of neurons, dim) float16 bits (uint16), by neuron group (not file order)."""
    f, dim = up.codes.shape
    if up.group != fmt.group or down.group != fmt.down_group or dim != fmt.dim:
        raise ValueError("weights do not match the bundle format")
    if max(int(up.codes.max(initial=0)), int(down.codes.max(initial=0))) >= 1 << fmt.bits:
        raise ValueError(f"codes do not fit in {fmt.bits} bits")
    uc = np.zeros((f, fmt.dim_pad), np.uint8)
    uc[:, :dim] = up.codes[order]
    dc = np.zeros((f, fmt.dim_pad), np.uint8)
    dc[:, :dim] = down.codes.T[order]
    us = np.zeros((f, fmt.groups), np.float16)
    uz = np.zeros((f, fmt.groups), np.float16)
    us[:, : up.scale.shape[1]], uz[:, : up.zero.shape[1]] = up.scale[order], up.zero[order]
    parts = [_pack_codes(uc, fmt.bits), _pack_codes(dc, fmt.bits), us.view(np.uint8),
             uz.view(np.uint8)]  # fmt: skip
    b = np.ascontiguousarray(np.concatenate(parts, axis=1))
    ds = np.ascontiguousarray(down.scale.astype(np.float16).T).view(np.uint16)
    dz = np.ascontiguousarray(down.zero.astype(np.float16).T).view(np.uint16)
    return b, ds, dz


def unpack_bundles(
    b: np.ndarray, fmt: BundleFormat, order: np.ndarray, down_scale: np.ndarray,
    down_zero: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The float weights a layer's bundles hold: up (f, dim), down (dim, f), by neuron (bundle
    p is neuron order[p])."""
    cb, g = fmt.code_bytes, fmt.groups
    f16 = b[:, 2 * cb :].view(np.float16).astype(np.float32)
    codes = [_unpack_codes(b[:, i * cb : (i + 1) * cb], fmt.bits)[:, : fmt.dim] for i in range(2)]
    col = np.arange(fmt.dim) // fmt.group
    up = f16[:, :g][:, col] * (codes[0] - f16[:, g : 2 * g][:, col])
    blk = np.asarray(order) // fmt.down_group
    ds = down_scale.view(np.float16).astype(np.float32)[blk]  # (f, dim) by file position
    dz = down_zero.view(np.float16).astype(np.float32)[blk]
    down = ds * (codes[1] - dz)
    inv = np.argsort(order)
    return up[inv], np.ascontiguousarray(down[inv].T)


@dataclass
class SparseSpec:
    """What the compiler wrote (the manifest's ``sparse_ffn``)."""

    fmt: BundleFormat
    sparsities: list[float]
    thresholds: list[list[float]]  # [sparsity][layer]
    calib_tokens: int = 0

    @classmethod
    def of(cls, art) -> SparseSpec:
        d = art.manifest.get("sparse_ffn")
        if not d:
            raise EdgertError(
                f"{art.path} has no neuron bundles for --sparsity",
                "compile it with `edgert compile ... --sparse-ffn`",
            )
        if "down_group" not in d:
            raise EdgertError(
                f"{art.path} has neuron bundles of an older layout (down columns quantized again)",
                "compile it again with `edgert compile ... --sparse-ffn`",
            )
        fmt = BundleFormat(d["dim"], d["bits"], d["group"], d["down_group"])
        return cls(fmt, list(d["sparsities"]), d["thresholds"], d.get("calib_tokens", 0))

    def thresholds_for(self, sparsity: float) -> list[float]:
        return self.thresholds[self.index_of(sparsity)]

    def index_of(self, sparsity: float) -> int:
        """Where ``sparsity`` is among the calibrated ones (an error naming them if nowhere)."""
        for k, s in enumerate(self.sparsities):
            if abs(s - sparsity) < 1e-9:
                return k
        have = ", ".join(f"{s:g}" for s in self.sparsities)
        raise EdgertError(
            f"--sparsity {sparsity:g} was not calibrated for this artifact (it has {have})",
            "pick one of those",
        )
