"""llama.cpp's quantized blocks imported as they are (compile --bits keep): every bit pattern of
every type against the gguf package's dequantization (llama.cpp's, ported), through the packed
LUT / q8 formats and through the C kernels."""

import numpy as np
import pytest
from edgert.compiler.quant import ggml
from edgert.compiler.quant.ggml import (
    BLOCKS,
    LUT_TYPES,
    Q8_TYPES,
    affine_blocks,
    import_lut,
    import_q8,
)

from edgert.format.q8 import dequantize_q8

#: byte ranges of each type's float16 fields (d, and dmin / m where the type has them)
F16_FIELDS = {
    "Q4_0": [(0, 2)],
    "Q4_1": [(0, 2), (2, 4)],
    "Q4_K": [(0, 2), (2, 4)],
    "Q2_K": [(80, 82), (82, 84)],
    "Q3_K": [(108, 110)],
    "Q5_0": [(0, 2)],
    "Q5_1": [(0, 2), (2, 4)],
    "Q5_K": [(0, 2), (2, 4)],
    "Q6_K": [(208, 210)],
    "Q8_0": [(0, 2)],
    "IQ4_NL": [(0, 2)],
    "IQ4_XS": [(0, 2)],
}
#: ternary types: random bytes are no valid trits (TQ1_0 packs 5 per byte); the gguf package's
#: (llama.cpp's) quantizer writes them
TERNARY = ("TQ1_0", "TQ2_0")


def random_rows(kind, m, k, seed=0, zero_d=0.0):
    """Rows of random blocks: every code, scale and min bit random; the float16 fields finite
    (magnitudes 1e-4 .. 1e-1, either sign), a share ``zero_d`` of them exactly 0. Ternary
    types: Gaussian rows (a share ``zero_d`` of blocks all zero) through llama.cpp's quantizer."""
    size, n = BLOCKS[kind]
    rng = np.random.default_rng(seed)
    if kind in TERNARY:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize

        w = rng.normal(size=(m * k // n, n)).astype(np.float32)
        w[rng.random(len(w)) < zero_d] = 0
        return quantize(w.reshape(m, k), GGMLQuantizationType[kind])
    raw = rng.integers(0, 256, size=(m * k // n, size), dtype=np.uint8)
    for a, b in F16_FIELDS[kind]:
        v = rng.choice([-1, 1], raw.shape[0]) * 10 ** rng.uniform(-4, -1, raw.shape[0])
        v[rng.random(raw.shape[0]) < zero_d] = 0
        raw[:, a:b] = v.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(m, -1)


def reference(kind, rows, k):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(rows, GGMLQuantizationType[kind]).reshape(rows.shape[0], k)


@pytest.mark.parametrize("kind", list(LUT_TYPES))
@pytest.mark.parametrize("zero_d", [0.0, 0.3])
def test_lut_import_equals_llamacpp_dequantization(kind, zero_d):
    """Equal within the float16 rounding of the composed group parameters (w = s code + o:
    scale = s and zero = -o / scale each rounded once): |error| <= 2^-11 (|s| codes + |o|),
    float32 arithmetic aside; Q4_0 bit for bit."""
    m, k = 33, 512
    rows = random_rows(kind, m, k, zero_d=zero_d)
    want = reference(kind, rows, k)
    pw = import_lut(kind, rows, k)
    assert (pw.bits, pw.group_size) == LUT_TYPES[kind] and pw.shape == (m, k)
    got = pw.dequantize()
    _, s, o = affine_blocks(kind, rows.reshape(-1, BLOCKS[kind][0]))
    g = pw.group_size
    per_group = 2.0**-11 * (np.abs(s) * (2**pw.bits - 1) + np.abs(o)) * 1.001 + 1e-12
    bound = np.repeat(per_group.reshape(m, -1), g, axis=1)
    assert (np.abs(got - want) <= bound).all(), float((np.abs(got - want) / bound).max())
    if kind in ("Q4_0", "Q5_0", *TERNARY):  # scale = the block's own float16 d, zero 8 / 16 / 1
        assert np.array_equal(got, want)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q3_K", "Q6_K"])
def test_large_matrix_imported_a_few_row_tiles_at_a_time(kind, monkeypatch):
    """A matrix above LUT_IMPORT_VALUES goes in runs of whole row tiles: the same buffers as in
    one piece (a symmetric type's zero still stored once)."""
    m, k = 100, 512
    rows = random_rows(kind, m, k, zero_d=0.1)
    whole = import_lut(kind, rows, k)
    monkeypatch.setattr(ggml, "LUT_IMPORT_VALUES", 40 * k)  # 32 rows at a time
    parts = import_lut(kind, rows, k)
    assert parts.meta == whole.meta and parts.shared_zero == (kind in ("Q4_0", "Q3_K", "Q6_K"))
    assert all(np.array_equal(a, b) for a, b in zip(parts.to_buffers().values(),
                                                    whole.to_buffers().values()))  # fmt: skip


def test_flat_groups_keep_their_offset():
    """A Q4_1 block with d = 0 is its min m everywhere: code 0 at scale m, zero -1."""
    rows = random_rows("Q4_1", 4, 64, zero_d=0.0)
    rows = rows.reshape(-1, 20)
    rows[:, 0:2] = 0  # d = 0
    rows = rows.reshape(4, -1)
    want = reference("Q4_1", rows, 64)
    assert np.array_equal(import_lut("Q4_1", rows, 64).dequantize(), want)


@pytest.mark.parametrize("kind", list(Q8_TYPES))
def test_q8_import_is_exact(kind, monkeypatch):
    m, k = 9, 256
    rows = random_rows(kind, m, k, zero_d=0.2)
    b = import_q8(kind, rows, k)
    assert np.array_equal(dequantize_q8(b["q"], b["scale"], k), reference(kind, rows, k))
    # a large table goes through the dequantizer a few blocks at a time: the same buffers
    monkeypatch.setattr(ggml, "Q8_IMPORT_BLOCKS", 5)
    again = import_q8(kind, rows, k)
    assert all(np.array_equal(again[n], b[n]) for n in b)


@pytest.mark.parametrize("kind", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_kernels_compute_with_the_imported_weights(kind):
    """The C kernels at the imported widths and group sizes (16 for Q2_K / Q3_K / Q6_K, 5 and 6
    bit-planes for Q5_K / Q6_K) agree with numpy on the imported weights within the activation
    tables' rounding; with many rows too (the int8 prompt path, or the LUT path for codes wider
    than it takes)."""
    from edgert.runtime.kernels import gemm, gemv

    m, k = 70, 768
    rows = random_rows(kind, m, k, seed=3)
    pw = import_lut(kind, rows, k)
    wd = pw.dequantize()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, k)).astype(np.float32)
    # squared error over sum((|W| |x|)^2): the LUT tables' 16-bit entries, or (many rows, codes
    # of at most 4 bits) activations rounded to int8 per group
    for y, want, tol in ((gemv(pw, x[0]), wd @ x[0], 1e-7), (gemm(pw, x), x @ wd.T, 1e-6)):
        mag = (np.abs(x[0]) @ np.abs(wd).T) if y.ndim == 1 else np.abs(x) @ np.abs(wd).T
        assert float(((y - want) ** 2).sum() / (mag**2).sum()) < tol


def test_wrong_row_length_is_refused():
    from edgert.errors import EdgertError

    rows = random_rows("Q4_K", 2, 256)
    with pytest.raises(EdgertError, match="Q4_K rows of 512 weights"):
        import_lut("Q4_K", rows, 512)
