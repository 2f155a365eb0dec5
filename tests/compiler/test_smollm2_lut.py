"""The real SmolLM2-135M compiled for this machine at 4 bits and run by the C forward pass on the
LUT kernels (the synthetic models elsewhere are 128 wide): greedy decoding, each step's logits
within the kernels' error of the numpy reference on the artifact's own dequantized weights, and
each chosen token the reference's, or one the kernels' error can put in its place."""

import numpy as np
import pytest

from edgert.format.artifact import Artifact
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

N_GEN = 16
#: max |C - reference| / max |reference| of a step's logits. A prompt shorter than the int8 path's
#: threshold (kernels_neon/tuning.h EDGERT_I8_MIN_ROWS: 8, 12 with AVX2 alone), and every token
#: decoded after it, goes through the LUT kernels alone (16-bit tables): up to 3.1e-3 on SmolLM2's
#: 30 layers, the prompt's and 8 greedy steps' logits of the 8 prompts of golden_smollm2.json
#: (AMD EPYC, AVX-512 VNNI; conftest's 5.6e-4 is on 2-6 layers)
LUT_TOL = 5e-3
#: a longer prompt goes through the int8 path (activations rounded to int8 per weight group, as
#: llama.cpp rounds them): up to 4.9e-2 over its positions, and the steps after it read its KV
#: cache (up to 3.5e-2), same measurement
I8_TOL = 7.5e-2
#: prompt -> the path it takes, by the tolerance for it
PROMPTS = {
    "The three primary colors are": LUT_TOL,  # 5 tokens
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n": I8_TOL,  # 19 tokens
}


@pytest.fixture(scope="module")
def engines(smollm2_q4):
    art = Artifact.open(smollm2_q4)
    ref = ReferenceEngine(reference_model(art), max_ctx=64)
    return open_artifact_engine(smollm2_q4, max_ctx=64), ref


def test_artifact_is_smollm2_at_4_bits(smollm2_q4):
    art = Artifact.open(smollm2_q4)
    c = art.config()
    assert (c.n_layers, c.dim, c.ffn_dim, c.vocab_size) == (30, 576, 1536, 49152)
    lut = {n: e["kernel"] for n, e in art.tensors.items() if "kernel" in e}  # the kernels' input
    assert len(lut) == 7 * c.n_layers  # q, k, v, o, gate, up, down
    assert all((k["fmt"], k["bits"], k["group_size"]) == ("uniform", 4, 32) for k in lut.values())


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_greedy_steps_match_the_reference(engines, prompt):
    eng, ref = engines
    tol = PROMPTS[prompt]
    ids = eng.tokenizer.encode(prompt)
    assert len(ids) < 8 if tol == LUT_TOL else len(ids) >= 12  # the path on every ISA
    eng.reset()
    got = generate(eng, prompt=prompt, n_predict=N_GEN, sampler=Sampler(temp=0),
                   stop_at_eos=False).tokens  # fmt: skip
    assert len(got) == N_GEN
    # the same steps again, keeping the C pass's logits: the prompt's last, then one per token
    eng.reset()
    steps = [eng.forward(ids, last_only=True)]
    steps += [eng.forward([t], last_only=True) for t in got[:-1]]
    # the reference on the same tokens, all positions in one pass
    ref.reset()
    want = ref.forward(ids + got[:-1])[len(ids) - 1 :]
    for i, (x, y) in enumerate(zip(steps, want)):
        scale = np.abs(y).max()
        assert np.abs(x - y).max() <= tol * scale, (i, np.abs(x - y).max() / scale)
        assert int(np.argmax(x)) == got[i]
        # the C pass may pick another token only where the kernels' error (up to tol * scale on
        # each logit) can reorder the two
        assert y[got[i]] >= y.max() - 2 * tol * scale, (i, got[i], int(np.argmax(y)))
