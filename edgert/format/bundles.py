"""Neuron bundles: a dense FFN stored neuron by neuron for ``--sparse-ffn`` — neuron j's
up-projection row and down-projection column side by side (one read brings both), each quantized
per group along the model dimension (w = scale * q + min, see edgert_forward.h), and what the
manifest says of them (:class:`SparseSpec`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgert.errors import EdgertError

#: bundle code widths (layers of 1 and 3 bits use 2 and 4: codes stay whole per byte)
BUNDLE_BITS = (2, 4, 8)


@dataclass(frozen=True)
class BundleFormat:
    """Neuron j's bundle: up row then down column, ``dim_pad`` ``bits``-bit codes each, then per
    group a float16 scale and minimum for each (w = scale * q + min); see edgert_forward.h."""

    dim: int
    bits: int
    group: int

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
        return 2 * self.code_bytes + 8 * self.groups

    @classmethod
    def for_layer_bits(cls, dim: int, bits: int, group: int) -> BundleFormat:
        """The bundle width for layers of ``bits`` (1 -> 2, 3 -> 4: codes stay whole per byte)."""
        return cls(dim, next(b for b in BUNDLE_BITS if b >= bits), group)


def _quantize_rows(w: np.ndarray, fmt: BundleFormat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w (r, dim) -> codes (r, dim_pad) uint8, scale and min (r, groups) float16."""
    r = w.shape[0]
    wp = np.zeros((r, fmt.dim_pad), np.float32)
    wp[:, : fmt.dim] = w
    g = wp.reshape(r, fmt.groups, fmt.group)
    lo, hi = g.min(axis=2), g.max(axis=2)
    top = (1 << fmt.bits) - 1
    scale = ((hi - lo) / top).astype(np.float16)
    mn = lo.astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)
    q = np.rint((g - mn.astype(np.float32)[..., None]) / safe[..., None])
    codes = np.clip(q, 0, top).astype(np.uint8).reshape(r, fmt.dim_pad)
    return codes, scale, mn


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


def pack_bundles(up: np.ndarray, down: np.ndarray, fmt: BundleFormat) -> np.ndarray:
    """up (f, dim), down (dim, f) float -> (f, fmt.nbytes) uint8 bundles."""
    uc, us, um = _quantize_rows(np.asarray(up, np.float32), fmt)
    dc, ds, dm = _quantize_rows(np.asarray(down, np.float32).T, fmt)
    parts = [_pack_codes(uc, fmt.bits), _pack_codes(dc, fmt.bits)]
    parts += [a.view(np.uint8) for a in (us, um, ds, dm)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def unpack_bundles(b: np.ndarray, fmt: BundleFormat) -> tuple[np.ndarray, np.ndarray]:
    """The float weights bundles hold: up (f, dim), down (dim, f)."""
    cb, g = fmt.code_bytes, fmt.groups
    f16 = b[:, 2 * cb :].view(np.float16).astype(np.float32)
    out = []
    for i in range(2):
        codes = _unpack_codes(b[:, i * cb : (i + 1) * cb], fmt.bits).astype(np.float32)
        scale, mn = f16[:, 2 * i * g : (2 * i + 1) * g], f16[:, (2 * i + 1) * g : (2 * i + 2) * g]
        w = codes.reshape(-1, g, fmt.group) * scale[..., None] + mn[..., None]
        out.append(w.reshape(-1, fmt.dim_pad)[:, : fmt.dim])
    return out[0], np.ascontiguousarray(out[1].T)


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
        fmt = BundleFormat(d["dim"], d["bits"], d["group"])
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
