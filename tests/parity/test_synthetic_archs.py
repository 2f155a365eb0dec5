"""Every architecture against llama.cpp on synthetic F32 GGUFs: same logits, which checks the
routing conventions (renormalised top-k, shared expert gate, q/k norm) against the peer."""

import numpy as np
import pytest
from edgert.compiler.frontends import load_model
from make_synthetic_gguf import ARCHS, make_synthetic_gguf

from edgert.runtime.reference import ReferenceEngine

pytestmark = pytest.mark.parity
LOGIT_TOL = 1e-5  # max abs, both sides float32 with an F32 KV cache


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_llama_cpp(tmp_path, arch):
    from llama_cpp import Llama

    path = make_synthetic_gguf(
        out=tmp_path / "m.gguf", arch=arch, qtype="F32", progress=False, layers=3
    )
    tokens = [5, 100, 7, 300, 42, 9, 11, 200, 17, 64]
    ours = ReferenceEngine(load_model(path), max_ctx=64).forward(tokens)
    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)])
    assert np.max(np.abs(ours - theirs)) < LOGIT_TOL
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))
