"""Parity with llama.cpp on the real SmolLM2-135M GGUF (tier `parity`: `./test.sh parity`).

Figures are recorded in docs/benchmarks-history.md by `python tools/parity.py --f32`.
"""

from pathlib import Path

import pytest
from parity import DEFAULT_TEXT, compare, to_f32_gguf  # tools/ is on sys.path (conftest)

pytestmark = pytest.mark.parity

PPL_REL_TOL = 0.01  # perplexity within 1% of llama.cpp
TOP1_MIN = 0.95  # top-1 agreement on the quantized GGUF (llama.cpp's own floor is ~0.967)
TOP1_MIN_F32 = 0.999  # when both sides compute in float32
LOGIT_MAX_DIFF_F32 = 1e-2


@pytest.fixture(scope="module")
def text():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: run `./test.sh parity`, which installs it")
    return Path(DEFAULT_TEXT).read_text()


def test_quantized_gguf(smollm2_path, text):
    r = compare(smollm2_path, text, ctx=512)
    print(r)
    assert r["tokenization_equal"]
    assert r["scored"] >= 3000
    assert r["ppl_rel_diff"] < PPL_REL_TOL
    assert r["top1_agreement"] >= TOP1_MIN
    # edgert agrees with llama.cpp about as well as llama.cpp agrees with itself
    assert r["top1_agreement"] >= r["llama_cpp_self_agreement"] - 0.01


def test_f32_conversion_is_exact(smollm2_path, text, tmp_path):
    f32 = tmp_path / "smollm2-f32.gguf"
    to_f32_gguf(smollm2_path, f32)
    r = compare(f32, text, ctx=512, max_chunks=3, f32_kv=True, self_check=False)
    print(r)
    assert r["top1_agreement"] >= TOP1_MIN_F32
    assert r["logit_max_abs_diff"] < LOGIT_MAX_DIFF_F32
    assert r["ppl_rel_diff"] < 1e-4
