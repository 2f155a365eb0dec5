"""Calibration statistics for the quantizers: the second moments H = X^T X / n of every linear
layer's inputs, collected by the float reference forward pass over calibration tokens (the
unquantized model is what the quantized one should reproduce).

Projections that read the same input (q, k and v; gate and up) share one matrix. The diagonal of
H is llama.cpp's importance matrix (the mean square of each input column); the full matrix is the
Hessian of the layer's output error that error-feedback quantization (compiler.quant.gptq) uses.
Experts of a mixture see the layer's FFN input for their gate and up projections (every token,
not only the ones routed to them); their down projections have no statistics and are quantized
by importance-free rounding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgert.errors import EdgertError
from edgert.format.model import ModelGraph
from edgert.progress import Progress

#: tokens per forward chunk while collecting (the KV cache restarts at every chunk)
CHUNK = 512


@dataclass
class CalibStats:
    """Per linear-layer input: summed X^T X (float32) and row count, shared by weight names."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    key_of: dict[str, str] = field(default_factory=dict)  # weight name -> input it reads
    tokens: int = 0

    def hessian(self, name: str, expert: int | None = None) -> np.ndarray | None:
        """H = X^T X / n for weight ``name`` (an expert stack's gate/up: the layer's FFN
        input), or None without statistics."""
        key = self.key_of.get(name)
        stacked = _EXPERT_IN.match(name)
        if key is None and expert is not None and stacked:
            key = FFN_INPUT.format(stacked.group(1))
        if key is None or key not in self.sums:
            return None
        return self.sums[key] / max(self.rows[key], 1)

    def add(self, key: str, x: np.ndarray) -> None:
        """Count the rows of ``x`` (n, k) as inputs of ``key``."""
        x32 = np.asarray(x, np.float32)
        xtx = x32.T @ x32
        self.sums[key] = self.sums[key] + xtx if key in self.sums else xtx
        self.rows[key] = self.rows.get(key, 0) + x32.shape[0]


#: the key under which a layer's FFN input is recorded (experts' gate and up read it)
FFN_INPUT = "blk.{}.ffn_input"
_EXPERT_IN = re.compile(r"^blk\.(\d+)\.ffn_(?:gate|up)_exps\.weight$")


def collect_stats(model: ModelGraph, tokens: list[int]) -> CalibStats:
    """Run the float model over ``tokens`` (chunks of :data:`CHUNK`) recording H per input."""
    from edgert.runtime.reference import ReferenceEngine

    if len(tokens) < 2:
        raise EdgertError("calibration needs at least 2 tokens")
    st = CalibStats(tokens=len(tokens))
    last: list = [None, None]  # the previous input and its key: q/k/v and gate/up share one

    class Recorder(ReferenceEngine):
        def _mm(self, x: np.ndarray, name: str) -> np.ndarray:
            if x is last[0]:
                st.key_of[name] = last[1]
            elif not name.endswith(".ffn_gate_inp.weight"):  # routers stay float
                key = st.key_of.setdefault(name, name)
                st.add(key, x)
                last[0], last[1] = x, key
            return super()._mm(x, name)

        def _moe(self, i: int, x: np.ndarray) -> np.ndarray:
            st.add(FFN_INPUT.format(i), x)
            return super()._moe(i, x)

    chunks = [tokens[i : i + CHUNK] for i in range(0, len(tokens), CHUNK)]
    eng = Recorder(model, max_ctx=CHUNK)
    with Progress(len(tokens), "calibration statistics") as bar:
        for ch in chunks:
            eng.reset()
            last[0] = last[1] = None
            eng.forward(ch)
            bar.update(len(ch))
    return st
