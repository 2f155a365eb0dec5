"""Which quantizer turns a float weight into a LUT-format one (``compile --quant-method``):

- ``gptq`` (default): error feedback on the calibration Hessian (compiler.quant.gptq); tensors
  without statistics (experts' down projections) fall back to ``imatrix``, then ``rtn``;
- ``imatrix``: round to nearest with each group's range searched for the least error weighted by
  the importance of each input column (the diagonal of the Hessian, llama.cpp's imatrix);
- ``rtn``: round to nearest with an unweighted range search (no calibration).

One quantizer serves bit allocation and the artifact writer: a fit made while measuring a
unit's sensitivity is kept (``keep``) and reused when the artifact is written, never refitted.
"""

from __future__ import annotations

import numpy as np

from edgert.compiler.quant.calib import CalibStats
from edgert.compiler.quant.scheme import QuantScheme
from edgert.errors import EdgertError
from edgert.format.lut import PackedWeight
from edgert.format.q8 import quantize_q8

METHODS = ("gptq", "imatrix", "rtn")


class WeightQuantizer:
    def __init__(self, scheme: QuantScheme, method: str = "gptq", stats: CalibStats | None = None):
        if method not in METHODS:
            raise EdgertError(f"unknown quantization method {method!r}", f"use one of {METHODS}")
        if method != "rtn" and stats is None:
            raise EdgertError(f"--quant-method {method} needs calibration statistics")
        self.scheme, self.method, self.stats = scheme, method, stats
        self._kept: dict[tuple[str, int | None, int], PackedWeight] = {}
        #: how many tensors each method quantized (reported in the manifest)
        self.counts: dict[str, int] = {}

    def __call__(
        self, name: str, w: np.ndarray, bits: int, *, expert: int | None = None, keep: bool = False
    ) -> PackedWeight:
        """``w`` (the expert's slice when ``expert`` is given) at ``bits``. With ``keep`` the fit
        stays for the next call with the same arguments, which takes it."""
        key = (name, expert, bits)
        pw = self._kept.pop(key, None)
        if pw is None:
            pw = self._fit(name, w, bits, expert)
        if keep:
            self._kept[key] = pw
        return pw

    def needs_values(self, name: str) -> bool:
        """Whether tensor ``name`` is quantized from its float values (always, here)."""
        return True

    def rows8(self, name: str, w: np.ndarray) -> dict[str, np.ndarray]:
        """Tensor ``name`` (an embedding table or head) as 8-bit rows."""
        return quantize_q8(w)

    def _fit(self, name: str, w: np.ndarray, bits: int, expert: int | None) -> PackedWeight:
        from edgert.compiler.quant.gptq import quantize_gptq
        from edgert.compiler.quant.lut import quantize_hlq, quantize_uniform

        s = self.scheme
        h = self.stats.hessian(name, expert) if self.stats is not None else None
        if self.method == "gptq" and h is not None:
            self.counts["gptq"] = self.counts.get("gptq", 0) + 1
            return quantize_gptq(w, h, fmt=s.fmt, bits=bits, group_size=s.group_size)
        imp = np.diag(h).copy() if h is not None and self.method != "rtn" else None
        used = "imatrix" if imp is not None else "rtn"
        self.counts[used] = self.counts.get(used, 0) + 1
        rtn = quantize_hlq if s.fmt == "hlq" else quantize_uniform
        return rtn(w, bits=bits, group_size=s.group_size, importance=imp)
