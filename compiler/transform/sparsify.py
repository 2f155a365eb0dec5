"""Neuron bundles for FFN sparsity (``edgert compile --sparse-ffn``; see edgert.plan.sparse, edgert.runtime.neurons).

Calibration runs the float model over calibration tokens and records every FFN neuron's gated
activation |act(gate x)| (silu, or Gemma's gelu). Per layer and target sparsity s, the threshold is the s-quantile of
those values (a fraction s of neurons falls below it on calibration text). Neurons are stored in
order of how often they pass the threshold of the middle sparsity, hot first.
"""

from __future__ import annotations

import zlib

import numpy as np

from edgert.format import names
from edgert.format.bundles import Affine, BundleFormat, pack_bundles
from edgert.runtime.reference import ACTIVATION

#: target sparsities the compiler calibrates thresholds for (0: every neuron, through the bundles)
SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibrate(
    model, tokens: list[int], sparsities=SPARSITIES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds (len(sparsities), n_layers), hot-first neuron order (n_layers, ffn_dim),
    activity trace): the trace is the last :data:`~edgert.plan.moe.TRACE_TOKENS` tokens' neuron
    levels (tokens, n_layers, ffn_dim; uint8, neuron ids): how many of the thresholds each
    neuron's activation passes, so a neuron is active at ``sparsities[k]`` where its level > k —
    what the planner replays through the window cache (edgert.plan.sparse.replay_activity)."""
    from edgert.compiler.transform.calibrate import ffn_inputs

    from edgert.plan.moe import TRACE_TOKENS

    xs = ffn_inputs(model, tokens)
    c = model.config
    thr = np.zeros((len(sparsities), c.n_layers), np.float64)
    order = np.zeros((c.n_layers, c.ffn_dim), np.int32)
    n = min(TRACE_TOKENS, len(tokens))
    levels = np.zeros((n, c.n_layers, c.ffn_dim), np.uint8)
    mid = 0.5  # hotness: how often a neuron is in the top half
    for i in range(c.n_layers):
        gate = xs[i] @ model.tensor(names.weight(i, "ffn_gate")).T
        a = np.abs(ACTIVATION[c.activation](gate))  # (tokens, ffn_dim)
        thr[:, i] = np.quantile(a, sparsities)
        thr[np.asarray(sparsities) == 0, i] = -1.0  # sparsity 0: every neuron, whatever its value
        hot = (a > np.quantile(a, mid)).mean(axis=0)
        order[i] = np.argsort(-hot, kind="stable")
        levels[:, i] = (a[-n:, :, None] > thr[None, None, :, i]).sum(axis=-1)
    return thr, order, levels


class BundleWriter:
    """Writes each layer's bundles (file order ``order``) as a streamed tensor, cut from the
    layer's up and down projections as the artifact quantized them (uniform weights: their own
    codes, no second rounding; HLQ weights, whose codes are not affine, are rounded to uniform
    ones at their width), then the resident index: neuron order, checksums and the down
    projections' scales and zeros (:class:`~edgert.format.bundles.BundleFormat`)."""

    def __init__(self, w, model, layer_bits: list[int], group: int, order: np.ndarray):
        c = model.config
        self.w, self.order = w, order
        self.fmt = BundleFormat.for_bits(c.dim, max(layer_bits), group, group)
        self.crc = np.zeros((c.n_layers, c.ffn_dim), np.uint32)
        shape = (c.n_layers, self.fmt.down_groups(c.ffn_dim), c.dim)
        self.down_scale, self.down_zero = np.zeros(shape, np.uint16), np.zeros(shape, np.uint16)
        #: projections rounded again (HLQ weights)
        self.rounded = 0

    def _affine(self, pw) -> Affine:
        if pw.fmt == "uniform":
            return pw.affine()
        from edgert.compiler.quant.lut import quantize_uniform

        self.rounded += 1
        return quantize_uniform(pw.dequantize(), bits=pw.bits, group_size=pw.group_size).affine()

    def add_layer(self, i: int, up, down) -> None:
        """Layer ``i``'s bundles from its compiled up and down projections (PackedWeight)."""
        b, ds, dz = pack_bundles(self._affine(up), self._affine(down), self.fmt, self.order[i])
        self.down_scale[i], self.down_zero[i] = ds, dz
        self.crc[i] = [zlib.crc32(r) for r in b]
        self.w.add_tensor(
            names.bundles(i),
            {"data": b},
            residency="streamed",
            meta={"format": "bundles", "shape": list(b.shape)},
        )

    def finish(self) -> BundleFormat:
        index = {"order": self.order, "crc": self.crc, "down_scale": self.down_scale,
                 "down_zero": self.down_zero}  # fmt: skip
        self.w.add_tensor(names.BUNDLE_INDEX, index, meta={"format": "index", "shape": []})
        return self.fmt


def write_activity(w, levels: np.ndarray) -> None:
    """The activity trace (:func:`calibrate`), read by the planner only, never by a run."""
    w.add_tensor(
        names.ACTIVITY_TRACE,
        {"levels": levels},
        residency="streamed",
        meta={"format": "trace", "shape": list(levels.shape)},
    )
