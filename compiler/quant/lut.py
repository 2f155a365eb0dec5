"""Round-to-nearest quantizers into the LUT kernels' formats (edgert.format.lut): uniform with a
per-group range search, and HLQ (hierarchical linear quantization: per-bit-plane scales fitted
by alternating least squares). Both minimise a squared error that may weight each input column
by its importance (the mean square of the activations it multiplies, llama.cpp's importance
matrix); the group fits are shared with the error-feedback quantizer (compiler.quant.gptq)."""

from __future__ import annotations

import numpy as np

from edgert.errors import EdgertError
from edgert.format.lut import PackedWeight, check_format, pack_hlq, pack_uniform


def _groups(
    w: np.ndarray, group_size: int, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """w (m, k) -> (m, G, g) padded by repeating each group's last value (no effect on min/max),
    and the (G, g) weight of each column in the squared error: 0 on padding, else 1 or the
    column's ``importance`` (k,)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.size == 0 or not np.isfinite(w).all():
        raise EdgertError(f"weights must be a finite non-empty (m, k) matrix, got {w.shape}")
    m, k = w.shape
    G = -(-k // group_size)
    pad = G * group_size - k
    wp = np.pad(w, ((0, 0), (0, pad)), mode="edge")
    mask = np.zeros(G * group_size, np.float32)
    if importance is None:
        mask[:k] = 1.0
    else:
        mask[:k] = column_weights(importance, k)
    return wp.reshape(m, G, group_size), mask.reshape(G, group_size)


def column_weights(importance: np.ndarray, k: int) -> np.ndarray:
    """Importance (k,) as error weights: finite, non-negative, mean 1, and never zero (a column
    no calibration token used still counts a little)."""
    imp = np.asarray(importance, np.float64).reshape(-1)
    if imp.shape != (k,) or not np.isfinite(imp).all() or (imp < 0).any():
        raise EdgertError(f"column importance must be {k} finite non-negative values")
    mean = imp.mean()
    if mean <= 0:
        return np.ones(k, np.float32)
    return (imp / mean + 1e-3).astype(np.float32)


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


#: shrink factors of the [min, max] range tried per group (the best by squared error is kept)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
#: further factors tried at 1 bit (two levels sit near +-0.8 sigma, a third of a group's range)
CLIP_RATIOS_1BIT = (0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25)


#: values per chunk of :func:`uniform_params` (its temporaries stay in the core's cache)
PARAMS_CHUNK = 1 << 16


def uniform_params(g: np.ndarray, mask: np.ndarray, bits: int, clip: bool):
    """Per-group (scale, zero) as float16 values, and codes, of groups g (..., g) minimising the
    squared error weighted by ``mask`` (broadcast to g) over range shrink factors (each end moved
    towards the group mean). Groups of a matrix (m, G, g) go a few rows at a time: the same
    values, several times faster than whole-matrix temporaries."""
    if g.ndim != 3 or g.size <= PARAMS_CHUNK or np.ndim(mask) == 3 and mask.shape[0] != 1:
        return _uniform_params(g, mask, bits, clip)
    step = max(1, PARAMS_CHUNK // (g.shape[1] * g.shape[2]))
    scale = np.empty(g.shape[:2], np.float32)
    zero = np.empty(g.shape[:2], np.float32)
    q = np.empty(g.shape, np.uint8)
    for r in range(0, len(g), step):
        s = slice(r, r + step)
        scale[s], zero[s], q[s] = _uniform_params(g[s], mask, bits, clip)
    return scale, zero, q


def _uniform_params(g: np.ndarray, mask: np.ndarray, bits: int, clip: bool):
    lo, hi = g.min(-1), g.max(-1)
    mid = g.mean(-1)
    levels = (1 << bits) - 1
    wts = None if np.all(mask == 1) else np.broadcast_to(mask, g.shape)  # None: all count 1
    best = None
    ratios = CLIP_RATIOS + (CLIP_RATIOS_1BIT if bits == 1 else ())
    q, t = np.empty(g.shape, np.float32), np.empty(g.shape, np.float32)
    for r in ratios if clip else (1.0,):
        lo_r, hi_r = mid + (lo - mid) * r, mid + (hi - mid) * r
        scale = _f16((hi_r - lo_r) / levels)
        scale = np.where(scale > 0, scale, np.float32(1.0))  # constant (or tiny-range) groups
        zero = _f16(-lo_r / scale)
        s, z = scale[..., None], zero[..., None]
        np.divide(g, s, out=q)  # q = clip(rint(g / scale + zero), 0, levels)
        q += z
        np.rint(q, out=q)
        np.clip(q, 0, levels, out=q)
        np.subtract(q, z, out=t)  # err = sum(((q - zero) * scale - g) ** 2 * wts)
        t *= s
        t -= g
        t *= t
        if wts is not None:
            t *= wts
        err = t.sum(-1)
        if best is None:
            best = [err, scale, zero, q.copy()]
        else:
            better = err < best[0]
            best[0] = np.where(better, err, best[0])
            best[1] = np.where(better, scale, best[1])
            best[2] = np.where(better, zero, best[2])
            np.copyto(best[3], q, where=better[..., None])
    return best[1], best[2], best[3].astype(np.uint8)


def quantize_uniform(
    w: np.ndarray,
    *,
    bits: int,
    group_size: int = 64,
    clip: bool = True,
    importance: np.ndarray | None = None,
) -> PackedWeight:
    """Asymmetric round-to-nearest per group; with ``clip`` the range is the one of
    :data:`CLIP_RATIOS` with the least squared error (else plain min/max), each column's error
    weighted by ``importance`` (k,) when given."""
    check_format("uniform", bits, group_size)
    m, k = np.shape(w)
    g, mask = _groups(w, group_size, importance)
    scale, zero, q = uniform_params(g, mask, bits, clip)
    codes = q.reshape(m, -1)[:, :k]
    return pack_uniform(codes, scale, zero, bits=bits, group_size=group_size)


def quantize_hlq(
    w: np.ndarray,
    *,
    bits: int,
    group_size: int = 64,
    iters: int = 8,
    importance: np.ndarray | None = None,
) -> PackedWeight:
    """HLQ: w ~ sum_j alpha_j bit_j + beta per group, by alternating least squares (each
    column's error weighted by ``importance`` (k,) when given)."""
    check_format("hlq", bits, group_size)
    m, k = np.shape(w)
    g, mask = _groups(w, group_size, importance)
    alpha, beta, q = hlq_params(g, mask, bits, iters)
    codes = q.reshape(m, -1)[:, :k]
    return pack_hlq(codes, alpha, beta, bits=bits, group_size=group_size)


def hlq_combos(bits: int) -> np.ndarray:
    """(2^bits, bits) float32: the bit-planes of every code."""
    return ((np.arange(1 << bits)[:, None] >> np.arange(bits)) & 1).astype(np.float32)


def hlq_values(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Every code's value per group: alpha (..., b), beta (...) -> (..., 2^b)."""
    return np.einsum("cb,...b->...c", hlq_combos(alpha.shape[-1]), alpha) + beta[..., None]


def nearest_code(g: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Codes (uint8, shape of g (..., n)) of the nearest of ``values`` (..., C) to each weight."""
    q = np.zeros(g.shape, np.uint8)
    best = np.full(g.shape, np.inf, np.float32)
    for c in range(values.shape[-1]):
        d = np.abs(g - values[..., c : c + 1])
        better = d < best
        best = np.where(better, d, best)
        q = np.where(better, c, q).astype(np.uint8)
    return q


def hlq_params(g: np.ndarray, mask: np.ndarray, bits: int, iters: int = 8):
    """Per-group float16 plane scales alpha (m, G, b) and offsets beta (m, G), and codes, of
    groups g (m, G, n): alternating least squares weighted by ``mask`` (broadcast to g), from the
    range-searched uniform fit (alpha_j = scale * 2^j, beta = -zero * scale)."""
    scale, zero, _ = uniform_params(g, mask, bits, clip=True)
    alpha = scale[..., None] * (1 << np.arange(bits)).astype(np.float32)  # (m, G, b)
    beta = -zero * scale
    combos = hlq_combos(bits)
    wts = np.broadcast_to(mask, g.shape).astype(np.float32)
    for it in range(iters + 1):
        alpha, beta = _f16(alpha), _f16(beta)
        q = nearest_code(g, hlq_values(alpha, beta))
        if it == iters:
            break
        # weighted least squares for [alpha, beta] given the bits (ridge-regularised)
        B = np.concatenate([combos[q], np.ones((*g.shape, 1), np.float32)], -1)
        B = B.astype(np.float64)
        Bw = B * wts[..., None]
        A = np.einsum("mgci,mgcj->mgij", Bw, B)
        ridge = 1e-6 * (np.trace(A, axis1=-2, axis2=-1)[..., None, None] + 1.0)
        A = A + ridge * np.eye(bits + 1)
        rhs = np.einsum("mgci,mgc->mgi", Bw, g.astype(np.float64))
        sol = np.linalg.solve(A, rhs[..., None])[..., 0]
        # keep the previous fit where least squares has no solution
        alpha_new, beta_new = sol[..., :bits].astype(np.float32), sol[..., bits].astype(np.float32)
        ok = np.isfinite(sol).all(-1)
        alpha = np.where(ok[..., None], alpha_new, alpha)
        beta = np.where(ok, beta_new, beta)
    return alpha, beta, q
