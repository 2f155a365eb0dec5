"""Bit allocation under an average-bits budget (``--bits-budget B``, in stored bits per weight:
codes plus group parameters).

Sensitivity: for each unit — one linear weight of a dense layer (as llama.cpp's mixes give
attn_v and ffn_down more bits where they matter), or a mixture layer's attention, or one expert
(EdgeMoE's expert-wise bit widths) — quantize only that unit to each candidate width and measure the
model's output error on calibration tokens: mean KL(p_float || p_quantized) of the next-token
distribution. Layers before the unit are run once and cached. Allocation: start every unit at the
lowest width and repeatedly take the upgrade with the largest error reduction per added bit until
the budget is spent (a greedy solution of the multiple-choice knapsack; errors are treated as
additive across units, which the measured perplexities check).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.model import ModelGraph
from edgert.progress import Progress
from edgert.runtime.perplexity import log_softmax
from edgert.runtime.reference import ReferenceEngine, rms_norm

#: (tensor name, expert index or None, weight (out, in), bits) -> dequantized weight
QDQ = Callable[[str, "int | None", np.ndarray, int], np.ndarray]


@dataclass
class Unit:
    name: str
    layer: int
    tensors: list[tuple[str, int | None]]  # (tensor name, expert index or None)
    params: int = 0
    errors: dict[int, float] = field(default_factory=dict)


def dense_linears(layer: int) -> list[str]:
    return [names.weight(layer, p) for p in names.PROJECTIONS]


def units_for(model: ModelGraph) -> list[Unit]:
    c = model.config
    units = []
    for i in range(c.n_layers):
        if not c.is_moe:
            units += [Unit(t, i, [(t, None)]) for t in dense_linears(i)]
            continue
        attn = [(names.weight(i, p), None) for p in names.ATTN_PROJECTIONS]
        if c.shared_expert_ffn_dim:
            attn += [(names.shared(i, p), None) for p in names.EXPERT_PROJECTIONS]
        units.append(Unit(names.layer(i, "attn"), i, attn))
        for e in range(c.n_experts):
            units.append(
                Unit(
                    names.layer(i, f"expert.{e}"),
                    i,
                    [(names.experts(i, p), e) for p in names.EXPERT_PROJECTIONS],
                )
            )
    for u in units:
        u.params = sum(
            int(np.prod(model.infos[t].shape[1 if e is not None else 0 :])) for t, e in u.tensors
        )
    return units


def measure_sensitivity(
    model: ModelGraph, tokens: list[int], units: list[Unit], candidates: tuple[int, ...], qdq: QDQ
) -> None:
    """Fill ``unit.errors[bits]`` = mean KL of the output with only ``unit`` quantized."""
    c = model.config
    eng = ReferenceEngine(model, max_ctx=len(tokens))
    head = model.tensor(names.OUTPUT if names.OUTPUT in model else names.EMBEDDING)
    out_norm = model.tensor(names.OUTPUT_NORM)

    def logits_from(x: np.ndarray, layer: int) -> np.ndarray:
        x = eng.run_layers(x, layer, c.n_layers)
        return log_softmax(rms_norm(x, out_norm, c.rms_eps) @ head.T)

    x = model.tensor(names.EMBEDDING)[np.asarray(tokens)]
    inputs = [x]
    for i in range(c.n_layers):
        inputs.append(eng.run_layers(inputs[-1], i, i + 1))
    ref = log_softmax(rms_norm(inputs[-1], out_norm, c.rms_eps) @ head.T)
    p_ref = np.exp(ref)
    with Progress(len(units) * len(candidates), "sensitivity") as bar:
        for u in units:
            for b in candidates:
                ov = {}
                for t, e in u.tensors:
                    w = model.tensor(t)
                    if e is None:
                        ov[t] = qdq(t, None, w, b)
                    else:
                        q = ov.get(t, w).copy()
                        q[e] = qdq(t, e, w[e], b)
                        ov[t] = q
                eng.overrides = ov
                lq = logits_from(inputs[u.layer], u.layer)
                u.errors[b] = float(np.mean(np.sum(p_ref * (ref - lq), axis=-1)))
                bar.update(1)
    eng.overrides = {}


def allocate(
    units: list[Unit],
    candidates: tuple[int, ...],
    budget: float,
    cost: Callable[[int], float] = float,
) -> dict[str, int]:
    """Bits per unit minimising summed errors with the average ``cost`` per weight of the chosen
    widths (param-weighted; the compiler passes stored bits per weight) <= budget."""
    cands = sorted(candidates)
    if budget < cost(cands[0]) - 1e-9:
        raise EdgertError(
            f"--bits-budget {budget} is below the smallest width's {cost(cands[0]):g} bits per "
            "weight",
            "raise the budget or use a larger --group-size",
        )
    total = sum(u.params for u in units)
    cap = budget * total
    bits = {u.name: cands[0] for u in units}
    used = cost(cands[0]) * total
    while True:
        best, best_gain = None, 0.0
        for u in units:
            k = cands.index(bits[u.name])
            for nb in cands[k + 1 :]:
                extra = u.params * (cost(nb) - cost(bits[u.name]))
                if used + extra > cap + 1e-9:
                    continue
                gain = (u.errors[bits[u.name]] - u.errors[nb]) / extra
                if gain > best_gain:
                    best, best_gain = (u, nb, extra), gain
        if best is None:
            return bits
        u, nb, extra = best
        bits[u.name] = nb
        used += extra


def average_bits(units: list[Unit], bits: dict[str, int]) -> float:
    return sum(u.params * bits[u.name] for u in units) / sum(u.params for u in units)
