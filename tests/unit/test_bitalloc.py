"""Bit allocation: sensitivity ranks units sensibly and the greedy allocation respects the budget
and beats uniform widths at the same average bits."""

import numpy as np
import pytest
from edgert.compiler.quant.bitalloc import allocate, average_bits, measure_sensitivity, units_for
from test_reference_archs import CONFIGS, random_model

from edgert.errors import EdgertError
from edgert.runtime.reference import ReferenceEngine


def rtn(w: np.ndarray, bits: int, group: int = 8) -> np.ndarray:
    """Round-to-nearest asymmetric quantize-dequantize per group (test stand-in for a format)."""
    o, k = w.shape
    g = w.reshape(o, k // group, group)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    s = np.maximum(hi - lo, 1e-8) / (2**bits - 1)
    return (np.round((g - lo) / s) * s + lo).reshape(o, k).astype(np.float32)


def qdq(name: str, expert: int | None, w: np.ndarray, bits: int) -> np.ndarray:
    """The sensitivity's quantizer: by tensor name (and expert), here plain rounding."""
    return rtn(w, bits)


def kl_of(model, tokens, overrides):
    a = ReferenceEngine(model).forward(tokens)
    e = ReferenceEngine(model)
    e.overrides = overrides
    b = e.forward(tokens)

    def ls(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    la, lb = ls(a.astype(np.float64)), ls(b.astype(np.float64))
    return float(np.mean(np.sum(np.exp(la) * (la - lb), -1)))


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_sensitivity_and_allocation(name):
    m = random_model(CONFIGS[name], seed=2)
    tokens = list(range(1, 40))
    units = units_for(m)
    assert sum(u.params for u in units) > 0
    measure_sensitivity(m, tokens, units, (1, 2, 4), qdq)
    for u in units:
        assert u.errors[1] >= u.errors[2] >= u.errors[4] >= 0
    # experts the calibration tokens never route to cost nothing; every other unit does
    active = [u for u in units if u.errors[1] > 0]
    assert len(active) >= len(units) // 2
    assert all(u.errors[1] > u.errors[2] > u.errors[4] for u in active)
    for budget in (1.5, 2.0, 3.0):
        bits = allocate(units, (1, 2, 4), budget)
        assert average_bits(units, bits) <= budget + 1e-9
    # the measured error of one unit equals the KL of running the model with only it quantized
    u = units[0]
    ov = {t: rtn(m.tensor(t), 2) for t, e in u.tensors if e is None}
    if ov:
        assert kl_of(m, tokens, ov) == pytest.approx(u.errors[2], rel=1e-3)


def test_allocation_beats_uniform_at_equal_bits():
    m = random_model(CONFIGS["llama"], seed=3)
    tokens = list(range(2, 30))
    units = units_for(m)
    measure_sensitivity(m, tokens, units, (1, 2, 3), qdq)
    bits = allocate(units, (1, 2, 3), 2.0)
    chosen = {t: rtn(m.tensor(t), bits[u.name]) for u in units for t, _ in u.tensors}
    uniform = {t: rtn(m.tensor(t), 2) for u in units for t, _ in u.tensors}
    assert kl_of(m, tokens, chosen) <= kl_of(m, tokens, uniform)


def test_budget_below_smallest_width():
    m = random_model(CONFIGS["llama"], seed=3)
    units = units_for(m)
    for u in units:
        u.errors = {2: 1.0, 4: 0.5}
    with pytest.raises(EdgertError, match="below"):
        allocate(units, (2, 4), 1.5)
