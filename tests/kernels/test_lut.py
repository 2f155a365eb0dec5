"""LUT kernels through the Python API: exact against the scalar twin, close to numpy on the
dequantized weights, packing round trips, quantizer quality, and input validation."""

import numpy as np
import pytest
from edgert.compiler.quant.lut import quantize_hlq, quantize_uniform

from edgert.errors import EdgertError
from edgert.format.lut import pack_uniform
from edgert.runtime.kernels import config, gemm, gemv, gemv_rows

# Kernel error against float32 numpy on the same dequantized weights, as a squared error
# normalised by sum((|W| |x|)^2): the only error is rounding the activation tables to integers
# of at most 32767 / (group / 4) (one scale per weight group), which scales with |W||x| rather
# than the (cancelling) y. Per group size: 4 / limit^2 (two table steps rms).
KERNEL_NMSE = {32: 2.5e-7, 64: 1e-6, 128: 4e-6}
# Plain NMSE of the kernel output against float32 numpy with the original (unquantized)
# weights, per format and bit width (Gaussian weights and activations, k >= 64): quantization
# error plus kernel error (worst case over the shapes below).
OUTPUT_NMSE = {
    ("uniform", 1): 0.7,
    ("uniform", 2): 0.25,
    ("uniform", 3): 0.065,
    ("uniform", 4): 0.02,
    ("hlq", 2): 0.28,
    ("hlq", 3): 0.06,
    ("hlq", 4): 0.017,
}
# weight NMSE of the quantizers on Gaussian weights, group 64 (uniform RTN min/max; HLQ by ALS)
WEIGHT_NMSE = {
    ("uniform", 1): 0.4,
    ("uniform", 2): 0.22,
    ("uniform", 3): 0.04,
    ("uniform", 4): 0.009,
    ("hlq", 2): 0.11,
    ("hlq", 3): 0.03,
    ("hlq", 4): 0.008,
}
SHAPES = [(1, 4), (7, 33), (33, 100), (64, 576), (100, 129), (576, 1536)]


def nmse(a, b):
    return float(((a - b) ** 2).sum() / (b**2).sum())


def kernel_err(y, wd, x):
    mag = np.abs(x) @ np.abs(wd).T if x.ndim == 2 else np.abs(wd) @ np.abs(x)
    return float(((y - (x @ wd.T if x.ndim == 2 else wd @ x)) ** 2).sum() / (mag**2).sum())


def make(fmt, bits, m, k, group, seed=0):
    w = np.random.default_rng(seed).normal(size=(m, k)).astype(np.float32)
    q = quantize_uniform if fmt == "uniform" else quantize_hlq
    return w, q(w, bits=bits, group_size=group)


CASES = [("uniform", b) for b in (1, 2, 3, 4)] + [("hlq", b) for b in (2, 3, 4)]


@pytest.mark.parametrize("fmt,bits", CASES)
@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_gemv_exact_and_close(fmt, bits, m, k, group):
    w, pw = make(fmt, bits, m, k, group)
    x = np.random.default_rng(1).normal(size=k).astype(np.float32)
    y = gemv(pw, x, threads=2)
    assert np.array_equal(y, gemv(pw, x, ref=True))
    assert kernel_err(y, pw.dequantize(), x) < KERNEL_NMSE[group]
    if k >= 64:
        assert nmse(y, w @ x) < OUTPUT_NMSE[(fmt, bits)]
    rows = np.unique(np.random.default_rng(2).integers(0, m, size=max(1, m // 3))).astype(np.int32)
    assert np.array_equal(gemv_rows(pw, x, rows), y[rows])


@pytest.mark.parametrize("fmt,bits", [("uniform", 2), ("hlq", 3)])
@pytest.mark.parametrize("n", [1, 5, 64, 513])
def test_gemm_batches(fmt, bits, n):
    _w, pw = make(fmt, bits, 70, 200, 64)
    X = np.random.default_rng(3).normal(size=(n, 200)).astype(np.float32)
    Y = gemm(pw, X, threads=2)
    assert Y.shape == (n, 70)
    assert np.array_equal(Y, gemm(pw, X, ref=True))
    cfg = config()
    if fmt == "uniform" and n >= int(cfg["i8_min_rows"]) and cfg["i8"] != "scalar":
        # the int8 prefill path: a row's result depends on no other row of the call
        X2 = np.random.default_rng(4).normal(size=X.shape).astype(np.float32)
        X2[-1] = X[-1]
        assert np.array_equal(Y[-1], gemm(pw, X2, threads=2)[-1])
    else:
        assert np.array_equal(Y[-1], gemv(pw, X[-1]))  # batch rows are independent
    assert kernel_err(Y, pw.dequantize(), X) < KERNEL_NMSE[64]


@pytest.mark.parametrize(
    "fmt,bits,k,group",
    [
        ("uniform", 4, 512, 64),
        # 130 groups, the last one partial: the table builders' last pass of 8 groups takes 2
        ("uniform", 2, 4133, 32),
        ("hlq", 3, 4133, 32),
    ],
)
def test_threads_do_not_change_results(fmt, bits, k, group):
    _, pw = make(fmt, bits, 1000, k, group)
    x = np.random.default_rng(4).normal(size=k).astype(np.float32)
    y = gemv(pw, x, threads=1)
    assert np.array_equal(y, gemv(pw, x, threads=3))
    assert np.array_equal(y, gemv(pw, x, threads=3, ref=True))


@pytest.mark.parametrize("fmt,bits", list(WEIGHT_NMSE))
def test_quantizer_quality(fmt, bits):
    w, pw = make(fmt, bits, 256, 512, 64, seed=5)
    assert nmse(pw.dequantize(), w) < WEIGHT_NMSE[(fmt, bits)]


def test_range_search_and_hlq_beat_min_max_at_2_bits():
    w = np.random.default_rng(6).normal(size=(256, 512)).astype(np.float32)
    minmax = nmse(quantize_uniform(w, bits=2, group_size=64, clip=False).dequantize(), w)
    searched = nmse(quantize_uniform(w, bits=2, group_size=64).dequantize(), w)
    hlq = nmse(quantize_hlq(w, bits=2, group_size=64).dequantize(), w)
    assert searched < 0.6 * minmax
    assert hlq < searched


def test_pack_roundtrip_and_buffers():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 8, size=(45, 77)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(45, 2)).astype(np.float32)
    zeros = rng.uniform(0, 7, size=(45, 2)).astype(np.float32)
    pw = pack_uniform(codes, scales, zeros, bits=3, group_size=64)
    assert np.array_equal(pw.codes(), codes)
    want = scales.astype(np.float16).astype(np.float32)[:, :, None] * (
        np.pad(codes, ((0, 0), (0, 51))).reshape(45, 2, 64)
        - zeros.astype(np.float16).astype(np.float32)[:, :, None]
    )
    assert np.allclose(pw.dequantize(), want.reshape(45, -1)[:, :77])
    again = type(pw).from_buffers(pw.meta, pw.to_buffers())
    assert np.array_equal(again.dequantize(), pw.dequantize())


def test_constant_group_is_exact():
    w = np.full((32, 64), 0.25, np.float32)
    pw = quantize_uniform(w, bits=2, group_size=64)
    assert np.array_equal(pw.dequantize(), w)


def test_bad_input_is_refused_before_c():
    _, pw = make("uniform", 2, 10, 64, 64)
    with pytest.raises(EdgertError, match="k=64"):
        gemv(pw, np.zeros(63, np.float32))
    with pytest.raises(EdgertError, match="vector"):
        gemv(pw, np.zeros((2, 64), np.float32))
    with pytest.raises(EdgertError, match="floating"):
        gemv(pw, np.zeros(64, np.int32))
    with pytest.raises(EdgertError, match="rows"):
        gemv_rows(pw, np.zeros(64, np.float32), np.array([10]))
    with pytest.raises(EdgertError, match="support"):
        quantize_uniform(np.zeros((4, 64), np.float32), bits=7)
    with pytest.raises(EdgertError, match="support"):
        quantize_hlq(np.zeros((4, 64), np.float32), bits=1)
    with pytest.raises(EdgertError, match="group size"):
        quantize_uniform(np.zeros((4, 64), np.float32), bits=2, group_size=48)
    with pytest.raises(EdgertError, match="finite"):
        quantize_uniform(np.full((4, 64), np.nan, np.float32), bits=2)
    broken = type(pw)(
        pw.fmt, pw.bits, pw.group_size, pw.shape, pw.planes[:, :-1].copy(), pw.scale, pw.zero
    )
    with pytest.raises(EdgertError, match="planes"):
        gemv(broken, np.zeros(64, np.float32))


Q8_REL_TOL = 1e-4  # max abs / max |y|: activations rounded to int16 (15 bits), float32 order


@pytest.mark.parametrize("m,k", [(1, 1), (5, 31), (33, 70), (300, 576)])
def test_q8_gemm(m, k):
    from edgert.format.q8 import dequantize_q8, quantize_q8
    from edgert.runtime.kernels import q8_gemm

    rng = np.random.default_rng(8)
    d = quantize_q8(rng.normal(size=(m, k)).astype(np.float32))
    X = rng.normal(size=(4, k)).astype(np.float32)
    want = X @ dequantize_q8(d["q"], d["scale"], k).T
    got = {}
    for ref in (False, True):
        got[ref] = y = q8_gemm(d["q"], d["scale"], X, k=k, threads=2, ref=ref)
        assert np.max(np.abs(y - want)) <= Q8_REL_TOL * np.max(np.abs(want)) + 1e-7
    # the SIMD rows sum the same exact block products as the twin, in another float order
    assert np.max(np.abs(got[False] - got[True])) <= 1e-6 * np.max(np.abs(got[True])) + 1e-9
    with pytest.raises(EdgertError, match="k="):
        q8_gemm(d["q"], d["scale"], np.zeros((1, k + 40), np.float32), k=k + 40)


def test_changed_buffers_are_checked_again():
    _, pw = make("uniform", 2, 40, 64, 64)
    x = np.zeros(64, np.float32)
    gemv(pw, x)  # validated and cached
    pw.planes = pw.planes[:, :-1].copy()
    with pytest.raises(EdgertError, match="planes"):
        gemv(pw, x)
    _, pw = make("uniform", 2, 40, 64, 64)
    gemv(pw, x)
    pw.shape = (80, 64)
    with pytest.raises(EdgertError, match="planes"):
        gemv(pw, x)


def test_read_only_and_strided_buffers():
    """Weights mapped read-only (as from an artifact) and strided or float64 activations take
    the same pointers' slower path and give the same outputs."""
    _, pw = make("uniform", 2, 70, 200, 64)
    x = np.random.default_rng(9).normal(size=400)
    want = gemv(pw, x[::2].astype(np.float32))
    frozen = {}
    for name, a in pw.to_buffers().items():
        frozen[name] = np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)
        assert not frozen[name].flags.writeable
    ro = type(pw).from_buffers(pw.meta, frozen)
    xr = x[::2].astype(np.float32)
    xr.flags.writeable = False
    assert np.array_equal(gemv(ro, xr), want)
    assert np.array_equal(gemv(pw, x[::2]), want)  # float64, strided
    assert np.array_equal(gemm(ro, np.stack([xr, xr]))[1], want)


@pytest.mark.parametrize("fmt,bits", [("uniform", 4), ("hlq", 3), ("uniform", 1)])
def test_gemm_multi_equals_separate_calls(fmt, bits):
    from edgert.runtime.kernels import gemm, gemm_multi

    pws = [make(fmt, bits, m, 70, 32)[1] for m in (40, 33, 96)]
    X = np.random.default_rng(5).normal(size=(3, 70)).astype(np.float32)
    for got, pw in zip(gemm_multi(pws, X, threads=2), pws):
        assert np.array_equal(got, gemm(pw, X, threads=1))
    with pytest.raises(EdgertError, match="share k"):
        gemm_multi([pws[0], make(fmt, bits, 8, 64, 32)[1]], X)


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 16), (2, 64), (6, 32)])
@pytest.mark.parametrize("m,k", [(7, 33), (100, 256), (576, 1536)])
def test_shared_zero_equals_its_table(bits, group, m, k):
    """A symmetric weight (one zero for every group, as llama.cpp's Q4_0) stores its zero once;
    every kernel path gives what the same weight with a zero per group gives, bit for bit."""
    from edgert.runtime.kernels import gemm_multi

    rng = np.random.default_rng(11)
    G = -(-k // group)
    codes = rng.integers(0, 1 << bits, size=(m, k))
    scales = rng.uniform(0.01, 0.1, size=(m, G)).astype(np.float32)
    zeros = np.full((m, G), 1 << (bits - 1), np.float32)
    scales[0, 0], zeros[0, 0] = 0, 3  # a group without slope: its zero does not matter
    shared = pack_uniform(codes, scales, zeros, bits=bits, group_size=group)
    full = pack_uniform(codes, scales, zeros, bits=bits, group_size=group, share=False)
    assert shared.shared_zero and shared.zero.shape == (1, 1, 32)
    # one tile of one group: a table of 32 is the shared zero, the same numbers either way
    assert full.shared_zero == (full.zero.size == 32)
    assert full.nbytes - shared.nbytes == full.zero.nbytes - 64
    assert np.array_equal(shared.dequantize(), full.dequantize())
    a, b = shared.affine(), full.affine()
    assert np.array_equal(a.scale, b.scale) and np.array_equal(a.zero[1:], b.zero[1:])
    x = rng.normal(size=k).astype(np.float32)
    X = rng.normal(size=(40, k)).astype(np.float32)  # 40 rows: the int8 prefill path
    rows = np.arange(0, m, 3, dtype=np.int32)
    for ref in (False, True):
        assert np.array_equal(gemv(shared, x, ref=ref), gemv(full, x, ref=ref))
        assert np.array_equal(gemm(shared, X, ref=ref), gemm(full, X, ref=ref))
        assert np.array_equal(
            gemv_rows(shared, x, rows, ref=ref), gemv_rows(full, x, rows, ref=ref)
        )
    for got, want in zip(gemm_multi([shared, shared], X, threads=2), [full, full]):
        assert np.array_equal(got, gemm(want, X))
    again = type(shared).from_buffers(shared.meta, shared.to_buffers())
    assert again.shared_zero and np.array_equal(gemv(again, x), gemv(full, x))
    # zeros that differ between live groups keep their table
    zeros[1, -1] += 1
    mixed = pack_uniform(codes, scales, zeros, bits=bits, group_size=group)
    table = pack_uniform(codes, scales, zeros, bits=bits, group_size=group, share=False).zero
    assert np.array_equal(mixed.zero, table) and mixed.zero.size == full.zero.size
