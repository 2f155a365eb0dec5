"""Calibrated quantization: error feedback (GPTQ) and importance-weighted rounding lower the
output error a layer's inputs see; with uncorrelated, equally important inputs they are plain
rounding; schemes whose group parameters cost more than they save are refused."""

import numpy as np
import pytest

from edgert.compiler.quant.gptq import output_error, quantize_gptq
from edgert.compiler.quant.lut import quantize_hlq, quantize_uniform
from edgert.compiler.quant.scheme import QuantScheme
from edgert.errors import EdgertError
from edgert.format.lut import bits_per_weight


def _layer(k=256, m=96, n=1024, seed=0):
    """Weights and correlated inputs with a few large channels, as a transformer's have."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * 0.15 + np.eye(k)
    x = rng.standard_normal((n, k)) @ mix
    x[:, :6] *= 8.0
    w = (rng.standard_normal((m, k)) * 0.05).astype(np.float32)
    return w, x.T @ x / n


RTN = {"uniform": quantize_uniform, "hlq": quantize_hlq}


@pytest.mark.parametrize("fmt,bits", [("uniform", 3), ("uniform", 2), ("hlq", 2)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error(fmt, bits, act_order):
    w, h = _layer()
    rtn = output_error(w, RTN[fmt](w, bits=bits, group_size=64).dequantize(), h)
    weighted = output_error(
        w, RTN[fmt](w, bits=bits, group_size=64, importance=np.diag(h)).dequantize(), h
    )
    # GPTQ's usual damping (0.01): error feedback at full strength
    pw = quantize_gptq(w, h, fmt=fmt, bits=bits, group_size=64, act_order=act_order, damp=0.01)
    gptq = output_error(w, pw.dequantize(), h)
    assert pw.fmt == fmt and pw.bits == bits and pw.shape == w.shape
    assert weighted < rtn
    assert gptq < 0.5 * rtn, (gptq, weighted, rtn)
    # the default damping (1.0, tuned on real text) trusts the correlations less: still better
    pw = quantize_gptq(w, h, fmt=fmt, bits=bits, group_size=64, act_order=act_order)
    assert gptq < output_error(w, pw.dequantize(), h) < 0.9 * weighted


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_uncorrelated_equal_inputs_is_rounding(act_order):
    """H = I: no error to feed forward, every column equally important: GPTQ's codes and group
    parameters are exactly those of round to nearest."""
    w, _ = _layer(k=192, m=40)
    h = np.eye(192) * 3.0
    for fmt, bits in (("uniform", 3), ("hlq", 2)):
        got = quantize_gptq(w, h, fmt=fmt, bits=bits, group_size=64, act_order=act_order)
        want = RTN[fmt](w, bits=bits, group_size=64)
        for part in ("planes", "scale", "zero"):
            np.testing.assert_array_equal(getattr(got, part), getattr(want, part), part)


def test_gptq_columns_no_input_reached_and_ragged_groups():
    """A column whose input is always zero has a zero row in H; k = 200 leaves a partial last
    group: the result is finite and its shape the weight's."""
    w, h = _layer(k=200, m=33)
    h[5, :] = h[:, 5] = 0.0
    pw = quantize_gptq(w, h, fmt="uniform", bits=2, group_size=128)
    deq = pw.dequantize()
    assert deq.shape == w.shape and np.isfinite(deq).all()
    assert output_error(w, deq, h) < output_error(
        w, quantize_uniform(w, bits=2, group_size=128).dequantize(), h
    )


def test_gptq_rejects_bad_statistics():
    w, h = _layer(k=64, m=32)
    with pytest.raises(EdgertError, match="Hessian"):
        quantize_gptq(w, h[:32, :32], fmt="uniform", bits=3, group_size=32)
    h = h.copy()
    h[0, 0] = np.nan
    with pytest.raises(EdgertError, match="Hessian"):
        quantize_gptq(w, h, fmt="uniform", bits=3, group_size=32)


def test_stored_bits_count_group_parameters():
    assert bits_per_weight("uniform", 3, 64) == 3.5
    assert bits_per_weight("uniform", 2, 64) == 2.5
    assert bits_per_weight("hlq", 2, 32) == 3.5
    assert bits_per_weight("hlq", 3, 32) == 5.0
    w = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    pw = quantize_uniform(w, bits=3, group_size=64)
    assert 8 * pw.nbytes / (64 * 128) == 3.5
    # a zero the same in every group (here: a constant matrix) is stored once
    pw = quantize_uniform(np.ones((64, 128), np.float32), bits=3, group_size=64)
    assert pw.shared_zero and 8 * pw.nbytes == 64 * 128 * 3 + 16 * 64 * 2 + 16 * 32


def test_schemes_that_weigh_as_much_as_a_wider_one_are_refused():
    with pytest.raises(EdgertError, match="as much as uniform 4-bit") as e:
        QuantScheme("hlq", 3, 32)
    assert "--group-size 64" in e.value.fix
    assert QuantScheme("hlq", 3, 64).bpw == 4.0
    assert QuantScheme("hlq", 4, 32).widths() == (2, 4)
    assert QuantScheme("uniform", 4, 32).widths() == (1, 2, 3, 4)
